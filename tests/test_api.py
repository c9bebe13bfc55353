"""The Python API and the example recipes."""
from pathlib import Path

import pytest

import swiftlike as wb
from swiftlike.config import SFTConfig, build_config, load_recipe
from swiftlike.errors import UserError

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("recipe", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_recipes_are_valid(recipe):
    from swiftlike.cli.main import COMMANDS

    command = recipe.name.split("_")[0]  # dpo_lora.yaml is a `wb dpo` recipe; others are sft recipes
    cls = COMMANDS[command][0] if command in COMMANDS else SFTConfig
    cfg = build_config(cls, load_recipe(str(recipe)))
    assert cfg.model and cfg.dataset


def test_api_rejects_unknown_keyword():
    with pytest.raises(UserError, match="unknown argument 'lora_rnk'; did you mean 'lora_rank'"):
        wb.sft(model="Qwen/Qwen3-0.6B", dataset=["x.jsonl"], lora_rnk=4)


def test_api_config_object_defaults():
    cfg = SFTConfig(model="Qwen/Qwen3-0.6B", dataset=["x.jsonl"], full=True).validate()
    assert cfg.learning_rate == 1e-5 and cfg.train_type == "full"
    assert SFTConfig(model="m", dataset=["x"]).validate().learning_rate == 1e-4


def test_a_config_object_is_read_as_keyword_arguments_are(tmp_path):
    """wb.config.SFTConfig(...) (the documented form; wb.config was an AttributeError) is coerced and checked as
    keywords are: a string dataset once became one source per character ('/' read the whole file system)."""
    cfg = wb.config.SFTConfig(model="Qwen/Qwen3-0.6B", miniature=True, dataset="examples/data/identity.jsonl",
                              lora=True, max_steps=1, output_dir=str(tmp_path / "run"))
    result = wb.sft(cfg)
    assert result.checkpoint == str(tmp_path / "run" / "checkpoint-1") and result.metrics["steps"] == 1
    with pytest.raises(UserError, match="lr_scheduler_type: 'cosin' is not one of cosine"):
        wb.sft(wb.config.SFTConfig(model="m", dataset=["x.jsonl"], lr_scheduler_type="cosin"))


@pytest.mark.slow
def test_load_model_and_generate_from_a_full_checkpoint(tmp_path):
    from swiftlike.pipelines.infer import generate

    result = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["examples/data/identity.jsonl"], full=True,
                    learning_rate=3e-3, max_steps=2, output_dir=str(tmp_path))
    model, tokenizer, template = wb.load_model(result.checkpoint)
    assert template.name == "qwen3"
    chat = [{"role": "user", "content": "Hi"}]
    text = generate(model, tokenizer, template, chat, max_new_tokens=5, raw=True)
    assert isinstance(text, str)
    message = generate(model, tokenizer, template, chat, max_new_tokens=5)
    assert message == template.parse_response(text) and message["role"] == "assistant"
    assert "<think>" not in message["content"] and "</think>" not in message["content"]  # as wb infer shows it
    lora_dir = tmp_path / "lora"
    lora = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["examples/data/identity.jsonl"], lora=True,
                  max_steps=1, output_dir=str(lora_dir))
    model, _, template = wb.load_model("", adapters=lora.checkpoint)
    assert type(model).__name__ == "PeftModelForCausalLM" and template.name == "qwen3"


def test_rows_in_memory_train_and_infer_as_a_file(tmp_path, monkeypatch):
    """dataset= as a list of dicts or a datasets.Dataset: written under the cache (by content) and read as files
    are; every other command of the API takes the flags' names too."""
    monkeypatch.setenv("WB_CACHE_DIR", str(tmp_path / "cache"))
    rows = [{"messages": [{"role": "user", "content": f"Who are you? {i}"},
                          {"role": "assistant", "content": "I am Wren."}]} for i in range(8)]
    run = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=rows, max_steps=1, output_dir=str(tmp_path / "a"))
    written = list((tmp_path / "cache" / "inline").glob("*.jsonl"))
    assert len(written) == 1 and written[0].read_text().count("\n") == 8
    import datasets

    again = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=datasets.Dataset.from_list(rows), max_steps=1,
                   output_dir=str(tmp_path / "b"))
    assert list((tmp_path / "cache" / "inline").glob("*.jsonl")) == written  # the same rows: the same file
    assert again.metrics["first_loss"] == run.metrics["first_loss"]
    for bad, said in (([rows[0], "x.jsonl"], "dataset: item 1 is a str; give rows"),
                      ([{"messages": object()}], "dataset: row 0 cannot be written as JSON")):
        with pytest.raises(UserError, match=said):
            wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=bad, output_dir=str(tmp_path / "c"))

    answer = wb.inference(adapters=Path(run.checkpoint), query="Who are you?", max_new_tokens=3)
    assert isinstance(answer, str)
    out = wb.inference(adapters=run.checkpoint, dataset=rows[:2], output=str(tmp_path / "answers.jsonl"),
                       max_new_tokens=3)
    assert Path(out).read_text().count("\n") == 2
    merged = wb.export_model(adapters=run.checkpoint, merge=True, output_dir=str(tmp_path / "merged"))
    assert (merged / "config.json").is_file()
    with wb.deploy(adapters=run.checkpoint, port=0) as server:  # on a thread: returns once it answers
        from openai import OpenAI

        client = OpenAI(base_url=server.url + "/v1", api_key="-")
        reply = client.chat.completions.create(model=client.models.list().data[0].id, max_tokens=3,
                                               messages=[{"role": "user", "content": "Hi"}])
        assert reply.choices[0].message.role == "assistant"
    with pytest.raises(Exception):
        client.models.list()  # stopped
    with pytest.raises(TypeError, match=r"wb.sft\(\*\*wb.config.load_recipe\('r.yaml'\)\)"):
        wb.sft(config="r.yaml")


@pytest.mark.slow
def test_a_one_process_engine_run_leaves_the_environment_as_it_was(tmp_path, monkeypatch):
    """fsdp/deepspeed in one process set torchrun's variables while they train; a later call (a notebook's) must
    not be taken for one of torchrun's processes (nproc_per_node=2 once ran one process without a word)."""
    import os

    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    common = dict(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["examples/data/identity.jsonl"], max_steps=1)
    wb.sft(**common, full=True, fsdp="full_shard", output_dir=str(tmp_path / "a"))
    assert not {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT"} & set(os.environ)
    with pytest.raises(UserError, match="nproc_per_node / nnodes > 1 start several processes"):
        wb.sft(**common, nproc_per_node=2, output_dir=str(tmp_path / "b"))
    for name in ("c", "d"):  # DeepSpeed twice in one process (it keeps its groups for the process's life)
        assert wb.sft(**common, deepspeed="zero2", output_dir=str(tmp_path / name)).checkpoint


def test_generate_refuses_what_it_cannot_do_and_takes_tools_and_n(tmp_path):
    from swiftlike.pipelines.infer import generate

    model, tokenizer, template = wb.load_model("Qwen/Qwen3-0.6B", miniature=True)
    chat = [{"role": "user", "content": "Hi"}]
    replies = generate(model, tokenizer, template, chat, max_new_tokens=2, n=2, temperature=1.0, seed=3)
    assert len(replies) == 2 and all(r["role"] == "assistant" for r in replies)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    seen = []
    real = template.encode_prompt
    template.encode_prompt = lambda messages, tools=None, **kw: seen.append(tools) or real(messages, tools, **kw)
    generate(model, tokenizer, template, chat, max_new_tokens=1, tools=tools)
    assert seen == [tools]
    with pytest.raises(UserError, match="generate\\(\\) got an unknown option 'top_n'"):
        generate(model, tokenizer, template, chat, top_n=3)
    model.swiftlike_task = "rm"
    with pytest.raises(UserError, match="this is a reward model"):
        generate(model, tokenizer, template, chat)
    with pytest.raises(UserError, match="'qwen_3' is not a registered template; did you mean 'qwen3'"):
        wb.get_template("qwen_3", tokenizer)
    assert wb.get_template("acme/unregistered", tokenizer).name.startswith("jinja:")  # its tokenizer's template
    with pytest.raises(UserError, match=r"^model: expected text, got a Qwen3ForCausalLM \(Qwen3ForCausalLM\(\.\.\.\)$"):
        wb.sft(model=model, dataset=["x.jsonl"])


def test_reward_registration_and_edited_reward_files(tmp_path):
    from swiftlike.rewards import BUILTINS, RewardContext, resolve

    with pytest.raises(UserError, match="'accuracy' is a built-in reward function"):
        wb.register_reward("accuracy")

    @wb.register_reward
    def shouting(completions, **_):
        return [float(c.isupper()) for c in completions]

    ctx = RewardContext()
    assert resolve(["shouting"], ctx)[0].fn is shouting and "shouting" not in BUILTINS
    f = tmp_path / "mine.py"
    f.write_text("def r(completions, **_):\n    return [1.0 for _ in completions]\n")
    first = resolve([f"{f}:r"], ctx)[0]
    f.write_text("def r(completions, **_):\n    return [-7.0 for _ in completions]\n  \n")  # edited in place
    assert first.fn(completions=["a"]) == [1.0] and resolve([f"{f}:r"], ctx)[0].fn(completions=["a"]) == [-7.0]


def test_a_streaming_dataset_in_memory_is_refused_not_read_forever():
    import datasets

    stream = datasets.Dataset.from_list([{"text": "a"}] * 3).to_iterable_dataset()
    with pytest.raises(UserError, match="a streaming IterableDataset has no end"):
        wb.pt(model="Qwen/Qwen3-0.6B", miniature=True, dataset=stream)
