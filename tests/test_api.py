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
