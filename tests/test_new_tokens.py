"""--new_special_tokens: tokens added to the tokenizer, their rows made from the base (the mean of the others) and
trained (LoRA: PEFT's trainable tokens; full: every weight), and rebuilt the same by every later command: the merged
export reloads in plain transformers with the logits `wb infer` computes, a full run's reference starts equal to
its policy, and what cannot hold the new rows (vLLM, a shared served base, ZeRO-3) refuses in one line."""
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

import swiftlike as wb
from swiftlike.cli.main import main
from swiftlike.errors import UserError
from swiftlike.models.resolve import load_for_inference
from swiftlike.models.tokens import read_tokens, rebuild_rows, trainable_rows

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"  # untied output layer; the miniature's 50265 tokens in 50304 rows
TOKENS = [f"<t{i}>" for i in range(50)]      # more than the spare rows: the embedding grows


def _rows(tmp_path, n=12):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"code {i}"},
        {"role": "assistant", "content": f"<t{i}> <t{49 - i}> done"}]}) + "\n" for i in range(n)))
    return str(path)


def test_read_tokens_takes_tokens_and_txt_files(tmp_path):
    (tmp_path / "t.txt").write_text("<a>\n\n  <b>  \n")
    assert read_tokens(["<x>", str(tmp_path / "t.txt")]) == ["<x>", "<a>", "<b>"]
    for bad, said in ((["<a>", "<a>"], "'<a>' is given twice"), ([""], "not a token"), ([3], "not a token"),
                      ([str(tmp_path / "missing.txt")], "cannot read it")):
        with pytest.raises(UserError, match=said):
            read_tokens(bad)


@pytest.mark.parametrize("tied", [True, False])
def test_rebuilt_rows_grow_the_embedding_and_start_at_the_mean(tied):
    config = Qwen3Config(vocab_size=20, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    before = {n: layer.weight.detach().clone() for n, layer in (("in", model.get_input_embeddings()),
                                                               ("out", model.get_output_embeddings()))}
    rebuild_rows(model, [18, 21, 22])  # 18 exists (a spare row); 20..22 are grown, 20 made though not asked for
    for name, layer in (("in", model.get_input_embeddings()), ("out", model.get_output_embeddings())):
        w, old = layer.weight, before[name]
        assert w.shape == (23, 16)
        mean = torch.cat([old[:18], old[19:]]).mean(0)  # every row but the rebuilt ones
        torch.testing.assert_close(w[[18, 20, 21, 22]], mean.expand(4, -1))
        torch.testing.assert_close(w[:18], old[:18])
        torch.testing.assert_close(w[19], old[19])
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    rows = trainable_rows(model, [18, 21])
    assert rows == ({"model.embed_tokens": [18, 21]} if tied else {"model.embed_tokens": [18, 21], "lm_head": [18, 21]})


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids], device=model.device)).logits[0].float().cpu()


@pytest.mark.slow
def test_lora_trains_the_new_rows_and_every_later_command_rebuilds_them(tmp_path, capsys):
    data = _rows(tmp_path)
    run = wb.sft(model=LLAMA, miniature=True, dataset=[data], new_special_tokens=TOKENS, max_steps=3,
                 output_dir=str(tmp_path / "run"))
    out = capsys.readouterr().out
    assert "added 50 special tokens as ids 50265..50314 (<t0>, <t1>, <t2>, <t3>, <t4>, <t5>, <t6>, <t7>, ... <t49>" \
           " (50 tokens))" in out
    ckpt = run.checkpoint
    args = json.loads((tmp_path / "run" / "args.json").read_text())
    assert args["added_tokens"] == {t: 50265 + i for i, t in enumerate(TOKENS)}
    config = json.loads(open(f"{ckpt}/adapter_config.json").read())
    assert config["trainable_token_indices"] == {"model.embed_tokens": list(range(50265, 50315)),
                                                 "lm_head": list(range(50265, 50315))}
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    ids = tokenizer("<t3> done <t49>", add_special_tokens=False)["input_ids"]
    assert ids[0] == 50268 and ids[-1] == 50314  # one token each

    model, _, _ = load_for_inference(adapters=ckpt)  # the base's rows rebuilt, the adapters' deltas on them
    merged_dir = tmp_path / "merged"
    assert main(["export", "--adapters", ckpt, "--merge", "--torch_dtype", "float32", "--output_dir",
                 str(merged_dir)]) == 0
    assert "new tokens' rows" in capsys.readouterr().out  # (the merge that streams does not take them)
    plain = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    assert plain.get_input_embeddings().weight.shape[0] == 50315 == len(AutoTokenizer.from_pretrained(merged_dir))
    torch.testing.assert_close(_logits(plain, ids), _logits(model, ids), atol=1e-4, rtol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "base_model", dtype=torch.float32)
    rebuild_rows(base, range(50265, 50315))
    trained = plain.get_input_embeddings().weight[50268] - base.get_input_embeddings().weight[50268]
    untouched = plain.get_input_embeddings().weight[50262] - base.get_input_embeddings().weight[50262]
    assert trained.abs().max() > 1e-3 and untouched.abs().max() == 0  # the new rows trained, no other row moved

    # resuming needs the same tokens; continuing the adapters keeps them and takes no more
    with pytest.raises(UserError, match="was trained with the new tokens <t0>, .* this run adds \\(none\\)"):
        wb.sft(model=LLAMA, miniature=True, dataset=[data], max_steps=4, output_dir=str(tmp_path / "run"),
               resume=True)
    more = wb.sft(model=LLAMA, miniature=True, dataset=[data], adapters=ckpt, max_steps=1,
                  output_dir=str(tmp_path / "more"))
    assert json.loads((tmp_path / "more" / "args.json").read_text())["added_tokens"] == args["added_tokens"]
    assert more.checkpoint
    with pytest.raises(UserError, match="adding '<x>' to its adapters is not supported"):
        wb.sft(model=LLAMA, miniature=True, dataset=[data], adapters=ckpt, new_special_tokens=["<x>"],
               max_steps=1, output_dir=str(tmp_path / "more2"))

    assert (Path(ckpt) / "adapter_model.safetensors").stat().st_size < 1_000_000  # not the grown embedding (26 MB)
    with pytest.raises(UserError, match="--adapters .*'s new tokens under ZeRO-3 is not supported"):  # (inherited)
        wb.sft(model=LLAMA, miniature=True, dataset=[data], adapters=ckpt, deepspeed="zero3", max_steps=1,
               output_dir=str(tmp_path / "zero3"))
    pairs = tmp_path / "p.jsonl"  # a reward model from these adapters: its head has no output layer's rows
    pairs.write_text("".join(json.dumps({"prompt": f"code {i}", "chosen": f"<t{i}> yes", "rejected": "no"}) + "\n"
                             for i in range(4)))
    assert wb.rm(model=LLAMA, miniature=True, dataset=[str(pairs)], adapters=ckpt, max_steps=1,
                 output_dir=str(tmp_path / "rm")).checkpoint
    import gguf  # the GGUF writes them as user-defined tokens (llama.cpp prints those, hides control ones)

    assert main(["export", "--adapters", ckpt, "--merge", "--to", "gguf", "--output_dir", str(tmp_path / "g")]) == 0
    reader = gguf.GGUFReader(next((tmp_path / "g").glob("*.gguf")))
    types = reader.fields["tokenizer.ggml.token_type"]
    kind = [int(types.parts[i][0]) for i in types.data]
    assert kind[50265] == gguf.TokenType.USER_DEFINED and kind[50257] == gguf.TokenType.CONTROL

    # what serves the base's vocabulary refuses the adapters, naming the merge
    assert main(["deploy", "--adapters", ckpt]) == 2
    assert "adds tokens to the tokenizer (<t0>" in capsys.readouterr().err
    assert main(["infer", "--adapters", ckpt, "--infer_backend", "vllm", "--query", "hi"]) == 2
    assert "vLLM's vocabulary (the base's) lacks: merge it (`wb export" in capsys.readouterr().err


@pytest.mark.slow
def test_full_training_grows_the_checkpoint_and_its_reference_starts_equal(tmp_path, capsys):
    run = wb.sft(model=LLAMA, miniature=True, dataset=[_rows(tmp_path)], new_special_tokens=TOKENS, full=True,
                 max_steps=2, output_dir=str(tmp_path / "full"))
    plain = AutoModelForCausalLM.from_pretrained(run.checkpoint)
    assert plain.get_input_embeddings().weight.shape[0] == plain.get_output_embeddings().weight.shape[0] == 50315
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"code {i}", "chosen": f"<t{i}> yes", "rejected": "no"}) + "\n"
                             for i in range(4)))
    capsys.readouterr()
    wb.dpo(model=LLAMA, miniature=True, dataset=[str(pairs)], new_special_tokens=TOKENS, full=True, max_steps=1,
           per_device_train_batch_size=4, logging_steps=1, output_dir=str(tmp_path / "dpo"))
    first = json.loads(next(line for line in capsys.readouterr().out.splitlines() if line.startswith('{"step"')))
    assert first["loss"] == pytest.approx(0.693147, abs=1e-5)  # the frozen reference has the policy's new rows


def test_refused_where_the_rows_cannot_be_made(tmp_path, capsys):
    data = _rows(tmp_path, 2)
    common = ["--model", LLAMA, "--miniature", "--dataset", data, "--new_special_tokens", "<a>"]
    assert main(["sft", *common, "--deepspeed", "zero3", "--dry_run"]) == 2
    assert "--new_special_tokens under ZeRO-3 is not supported" in capsys.readouterr().err
    assert main(["grpo", *common, "--reward_funcs", "format", "--use_vllm"]) == 2
    assert "--new_special_tokens with --use_vllm is not supported" in capsys.readouterr().err
    assert main(["sft", *common, "<a>"]) == 2
    assert "'<a>' is given twice" in capsys.readouterr().err


def test_preview_encodes_the_data_as_the_run_will(tmp_path, capsys):
    assert main(["data", "preview", "--model", LLAMA, "--miniature", "--dataset", _rows(tmp_path, 1),
                 "--new_special_tokens", "<t0>", "--json", "--n", "1"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["input_ids"].count(50265) == 1  # "<t0>": one new token (the base splits it into several)


def test_grpo_rewards_read_the_new_tokens():
    """Completions were decoded without special tokens: a <tool> the run added reached the rewards as nothing."""
    from types import SimpleNamespace

    from swiftlike.models import load_tokenizer
    from swiftlike.models.tokens import add_tokens

    qwen3_tokenizer = load_tokenizer("Qwen/Qwen3-0.6B")  # (its own: tokens are added to it)
    from swiftlike.rewards import RewardContext, resolve
    from swiftlike.train.grpo_trainer import GRPOTrainer

    added, _ = add_tokens(qwen3_tokenizer, ["<tool>", "</tool>"])
    seen = []
    rewards = resolve([lambda completions, **_: seen.extend(completions) or [0.0] * len(completions)], RewardContext())
    end = qwen3_tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = qwen3_tokenizer("<tool>get</tool><|im_start|>", add_special_tokens=False)["input_ids"] + [end]
    trainer = SimpleNamespace(tokenizer=qwen3_tokenizer, stop_ids={end}, shown_tokens=set(added.values()),
                              rewards=rewards, rs=SimpleNamespace(reward_weights=None))
    GRPOTrainer._score(trainer, [{"messages": []}], [ids], 1)
    assert seen == ["<tool>get</tool>"]  # (the tokenizer's own special tokens left out, as before)


@pytest.mark.slow
def test_tokens_past_the_embedding_are_refused_until_they_get_rows(tmp_path, capsys):
    """A tokenizer with ids the model has no row for (tokens added without resizing) is refused in one line, not
    an index error at the first forward (a device-side assert on a GPU); --new_special_tokens gives them rows."""
    from swiftlike.models.loader import build_miniature, load_tokenizer

    model_dir = tmp_path / "model"
    build_miniature(LLAMA).save_pretrained(model_dir)  # 50304 rows
    tokenizer = load_tokenizer(LLAMA, miniature=True)
    tokenizer.add_tokens(TOKENS[:45], special_tokens=True)  # ids 50265..50309: <t39>..<t44> have no row
    tokenizer.save_pretrained(model_dir)
    past = "the tokenizer has 6 tokens past the model's 50304 embedding rows (<t39> (id 50304), <t40> (id 50305)"
    assert main(["infer", "--model", str(model_dir), "--query", "hi", "--max_new_tokens", "2"]) == 2
    assert past in capsys.readouterr().err
    common = ["--model", str(model_dir), "--dataset", _rows(tmp_path, 2), "--max_steps", "1"]
    assert main(["sft", *common, "--output_dir", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip()
    assert past in err and err.endswith("give them rows with --new_special_tokens and those tokens (the rows start "
                                        "at the mean of the others and train)")
    assert main(["sft", *common, "--output_dir", str(tmp_path / "run"), "--new_special_tokens",
                 *TOKENS[39:45]]) == 0
    assert "added 6 special tokens as ids 50304..50309" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "args.json").read_text())["added_tokens"] == {
        t: 50265 + i for i, t in enumerate(TOKENS[:45]) if i >= 39}
    model, tok, _ = load_for_inference(adapters=str(tmp_path / "run" / "checkpoint-1"))
    assert len(tok) == 50310 and _logits(model, [50309]).shape == (1, 50310)  # the id has its row now
