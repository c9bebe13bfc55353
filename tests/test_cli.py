"""CLI behaviour: fast help, helpful flags, and one-line errors (exit 2) for bad input."""
import json
import subprocess
import sys

import pytest

from swiftlike import accel
from swiftlike.cli.main import build_parser, main
from swiftlike.errors import UserError

MODEL = ["--model", "Qwen/Qwen3-0.6B", "--miniature"]


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from swiftlike.cli.main import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_flag_has_help():
    parser = build_parser()
    subs = parser._subparsers._group_actions[0].choices
    for name, sub in subs.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and len(action.help) > 10, f"wb {name} {action.option_strings[0]}"


def test_the_flags_doc_is_current():
    from pathlib import Path

    from swiftlike.cli.flags_doc import flags_markdown

    doc = Path(__file__).resolve().parents[1] / "docs" / "flags.md"
    assert doc.read_text(encoding="utf-8") == flags_markdown(), "run: python scripts/gen_flags_doc.py"


def test_wb_help_runs():
    out = subprocess.run([sys.executable, "-m", "swiftlike.cli.main", "sft", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--lora_rank" in out.stdout and "--resume_from_checkpoint" in out.stdout
    flat = " ".join(out.stdout.split())
    assert "--warmup_steps N Warm-up steps (overrides --warmup_ratio when > 0). (default: 0)" in flat  # (0 was hidden)


def test_argparse_errors_are_one_line(capsys):
    """A value of the wrong type or an unknown choice printed the whole usage block (35 lines)."""
    assert _error(capsys, ["sft", "--max_steps", "abc"]) == \
        "wb: error: argument --max_steps: invalid int value: 'abc'; see wb sft --help"
    assert _error(capsys, ["sft", "--lora", "maybe"]) == \
        "wb: error: argument --lora: expected true or false, got 'maybe'; see wb sft --help"
    assert _error(capsys, ["nonsense"]).startswith("wb: error: argument COMMAND: invalid choice: 'nonsense'")


def test_explicit_launch_flags_win_over_the_environment(monkeypatch):
    """torchrun's variables fill what the flags leave out; an explicit --node_rank 0 was taken for NODE_RANK=1."""
    from swiftlike.cli.main import launch_plan
    from swiftlike.config import SFTConfig

    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("NNODES", "2")
    monkeypatch.setenv("NPROC_PER_NODE", "4")
    cfg = SFTConfig(nnodes=2, node_rank=0, nproc_per_node=1)
    plan = launch_plan(cfg, {"nnodes", "node_rank", "nproc_per_node"})
    assert (plan["node_rank"], plan["nproc_per_node"], plan["master_port"]) == (0, 1, 29500)
    plan = launch_plan(SFTConfig(), set())
    assert (plan["nnodes"], plan["node_rank"], plan["nproc_per_node"]) == (2, 1, 4)
    monkeypatch.setenv("MASTER_PORT", "x")
    with pytest.raises(UserError, match="MASTER_PORT='x' is not a number"):
        launch_plan(SFTConfig(), set())


def test_a_template_or_attention_name_that_does_not_exist_is_refused(capsys, tmp_path):
    """A typo in --template fell back to the tokenizer's own template without a word; --attn_implementation foo
    was transformers' traceback."""
    run = ["sft", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--dataset", "examples/data/identity.jsonl",
           "--max_steps", "1"]
    assert _error(capsys, [*run, "--template", "qwen2.5"]).startswith(
        "wb: error: --template 'qwen2.5' is not a registered template; did you mean 'qwen2_5'?")
    assert _error(capsys, [*run, "--attn_implementation", "foo", "--output_dir", str(tmp_path / "run")]) == \
        'wb: error: --attn_implementation foo: Specified `attn_implementation="foo"` is not supported'


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    return err


def test_missing_dataset(capsys, tmp_path):
    err = _error(capsys, ["sft", *MODEL, "--dataset", str(tmp_path / "nope.jsonl")])
    assert err == f"wb: error: dataset not found: {tmp_path / 'nope.jsonl'}"


def test_bad_jsonl_line_names_file_and_line(capsys, tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n{oops\n')
    err = _error(capsys, ["sft", *MODEL, "--dataset", str(p), "--output_dir", str(tmp_path / "o")])
    assert err.startswith(f"wb: error: {p}:2: not valid JSON")


def test_unknown_format_names_row_and_fields(capsys, tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"ask": "a", "reply": "b"}\n')
    err = _error(capsys, ["sft", *MODEL, "--dataset", str(p), "--output_dir", str(tmp_path / "o")])
    assert f"{p}:1: unknown format (fields: ask, reply)" in err


def test_empty_after_filtering(capsys, tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "a " * 50},
                                          {"role": "assistant", "content": "b " * 50}]}) + "\n")
    err = _error(capsys, ["sft", *MODEL, "--dataset", str(p), "--max_length", "16", "--output_dir", str(tmp_path / "o")])
    assert "no rows left to train on: rows read 1, kept 0, dropped 1 (longer than max_length 16)" in err


def test_unknown_model_without_network(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _error(capsys, ["sft", "--model", "nobody/no-such-model", "--dataset", "examples/data/identity.jsonl",
                          "--output_dir", str(tmp_path / "o")])
    assert "cannot get 'nobody/no-such-model' from huggingface" in err and "--miniature" in err


def test_lora_with_full(capsys):
    err = _error(capsys, ["sft", *MODEL, "--dataset", "x.jsonl", "--lora", "--full"])
    assert err == "wb: error: choose one training mode, got --lora and --full"


def test_a_mode_flag_replaces_the_recipes_mode(capsys):
    """Flags override the recipe, the training mode too (it was 'choose one training mode, got --lora and --full',
    naming a flag the user never typed)."""
    assert main(["sft", "--config", "examples/sft_lora.yaml", "--full", "--dry_run"]) == 0
    assert "training   sft, full," in capsys.readouterr().out
    assert main(["sft", "--config", "examples/sft_lora.yaml", "--dry_run"]) == 0
    assert "training   sft, lora r=8" in capsys.readouterr().out


def test_list_flags_repeat_to_mix():
    """`--dataset a --dataset b` mixes both, as --help and docs/data.md say (the second once replaced the first)."""
    args = build_parser().parse_args(["sft", "--dataset", "a.jsonl", "--dataset", "b.csv", "c.json",
                                      "--target_modules", "q_proj", "--target_modules", "v_proj"])
    assert args.dataset == ["a.jsonl", "b.csv", "c.json"] and args.target_modules == ["q_proj", "v_proj"]


def test_recipe_unknown_key_suggests(capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: Qwen/Qwen3-0.6B\nlearning_rat: 0.1\n")
    err = _error(capsys, ["sft", "--config", str(recipe)])
    assert err == f"wb: error: unknown key in {recipe} 'learning_rat'; did you mean 'learning_rate'?"


def test_unknown_flag_suggests(capsys):
    err = _error(capsys, ["sft", *MODEL, "--lora_rnak", "4"])
    assert err == "wb: error: unknown flag --lora_rnak; did you mean --lora_rank?"


def test_models_and_env(capsys):
    assert main(["models", "--family", "qwen3"]) == 0
    out = capsys.readouterr().out
    assert "Qwen/Qwen3-8B" in out and "qwen3_thinking_2507" in out
    assert main(["models", "--family", "Qwen3"]) == 0 and "Qwen/Qwen3-8B" in capsys.readouterr().out
    assert main(["models", "--family", "nope"]) == 2
    assert "families: deepseek, gemma" in capsys.readouterr().err
    assert main(["env", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["device"] == accel.device_type()


def test_row_the_template_rejects_is_named(capsys, tmp_path):
    p = tmp_path / "d.jsonl"
    ok = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    bad = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                        {"role": "assistant", "content": "b"}]}
    p.write_text(json.dumps(ok) + "\n" + json.dumps(bad) + "\n")
    err = _error(capsys, ["sft", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--template", "gemma2",
                          "--dataset", str(p), "--output_dir", str(tmp_path / "o")])
    assert err == f"wb: error: {p}:2: System role not supported"


def test_data_preview_highlights_trained_spans(capsys):
    assert main(["data", "preview", "--model", "Qwen/Qwen3-0.6B", "--dataset", "tests/data/sharegpt_fastchat_sample.json",
                 "--n", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("── tests/data/sharegpt_fastchat_sample.json row 0 · template qwen3")
    assert "<|im_start|>assistant\n⟦I am Vicuna, a language model" in out
    assert "⟦<think>\n\n</think>\n\nYou too!<|im_end|>⟧\n" in out
    assert main(["data", "preview", "--model", "Qwen/Qwen3-0.6B", "--dataset", "examples/data/identity.jsonl",
                 "--n", "2", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and lines[0]["source"] == "examples/data/identity.jsonl:1"
    assert len(lines[0]["input_ids"]) == len(lines[0]["labels"])


def test_data_without_action(capsys):
    assert _error(capsys, ["data"]) == "wb: error: wb data needs an action: preview"
