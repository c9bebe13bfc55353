"""What the command line says: suggestions only for near misses, quiet exits into closed pipes, a pair report in
the unit --max_length limits, and one line about a reward model's head instead of transformers' load report."""
import logging
import subprocess
import sys

import pytest

from swiftlike.cli.main import main

MODEL = ["--model", "Qwen/Qwen3-0.6B", "--miniature"]


def _error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("flag, message", [
    ("--learning_rat", "unknown flag --learning_rat; did you mean --learning_rate?"),
    ("--lora_rnak", "unknown flag --lora_rnak; did you mean --lora_rank?"),
    ("--num_train_epoch", "unknown flag --num_train_epoch; did you mean --num_train_epochs?"),
    ("--megatron", "unknown flag --megatron; see wb sft --help"),     # nothing close
    ("--warp_speed", "unknown flag --warp_speed; see wb sft --help"), # not --warmup_steps
    ("--lr", "unknown flag --lr; see wb sft --help"),                 # not --lora
])
def test_unknown_flags_get_a_suggestion_only_when_close(capsys, flag, message):
    assert _error(capsys, ["sft", *MODEL, flag, "1"]) == f"wb: error: {message}"


@pytest.mark.parametrize("command, flags, message", [
    ("sft", ["--learning_rate", "-1"], "--learning_rate must be positive, got -1.0"),   # was torch's traceback
    ("sft", ["--learning_rate", "0"], "--learning_rate must be positive, got 0.0"),     # was a run learning nothing
    ("sft", ["--weight_decay", "-0.1"], "--weight_decay must be >= 0, got -0.1"),       # was torch's traceback
    ("sft", ["--num_train_epochs", "0"], "--num_train_epochs must be positive (or give --max_steps), got 0.0"),
    ("sft", ["--warmup_ratio", "2"], "--warmup_ratio must be in [0, 1], got 2.0"),
    ("sft", ["--warmup_steps", "-3"], "--warmup_steps must be >= 0, got -3"),
    ("sft", ["--max_grad_norm", "-1"], "--max_grad_norm must be >= 0 (0 disables clipping), got -1.0"),
    ("sft", ["--lora_alpha", "0"], "--lora_alpha must be positive (0 scales the adapters to nothing), got 0"),
    ("sft", ["--lora_dropout", "1.5"], "--lora_dropout must be in [0, 1), got 1.5"),  # was after the model loaded
    ("sft", ["--save_total_limit", "0"], "--save_total_limit must be at least 1, got 0"),
    ("dpo", ["--eval_steps", "0"], "--eval_steps must be at least 1, got 0"),
    ("sft", ["--split_ratio", "0.1", "--val_dataset", "v.jsonl"],                         # (the split was ignored)
     "--split_ratio and --val_dataset are two sources of validation rows; choose one"),
    ("sft", ["--eval_steps", "5"],                                                        # (was ignored)
     "--eval_steps needs validation rows: add --val_dataset or --split_ratio"),
    ("grpo", ["--reward_funcs", "format", "--top_p", "2"], "top_p must be in (0, 1], got 2.0"),
    ("grpo", ["--reward_funcs", "format", "--top_k", "-1"], "top_k must be >= 0 (0 is off), got -1"),
    ("grpo", ["--reward_funcs", "format", "--epsilon", "0"],
     "--epsilon and --epsilon_high must be positive, got 0.0 and None"),
    # each once accepted: a weight dropped silently, a traceback after loading, a penalty on everything
    ("grpo", ["--reward_funcs", "format", "length", "--reward_weights", "1", "nan"],
     "--reward_weights must be finite numbers, got [1.0, nan]"),
    ("grpo", ["--reward_funcs", "format", "--format_pattern", "("],
     "--format_pattern '(' is not a regular expression: missing ), unterminated subpattern at position 0"),
    ("grpo", ["--reward_funcs", "repetition", "--repetition_ngram", "0"],
     "--repetition_ngram must be at least 1, got 0"),
    ("grpo", ["--reward_funcs", "length", "--soft_cache_length", "-1"],
     "--soft_cache_length must be in [0, --max_completion_length 256), got -1"),
    ("dpo", ["--label_smoothing", "0.6"], "--label_smoothing must be in [0, 0.5), got 0.6"),  # (flips preference)
    ("dpo", ["--loss_type", "ipo", "--label_smoothing", "0.1"],                               # (was ignored)
     "--label_smoothing applies to sigmoid, robust, simpo and cpo, not --loss_type ipo"),
])
def test_numbers_no_run_can_use_are_one_line_errors(capsys, tmp_path, command, flags, message):
    argv = [command, *MODEL, "--dataset", "d.jsonl", "--output_dir", str(tmp_path / "run"), *flags]
    assert _error(capsys, argv) == f"wb: error: {message}"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("line, message", [
    ("output_dir: [1, 2]", "output_dir: expected text, got [1, 2]"),        # were tracebacks
    ("model: {a: 1}", "model: expected text, got {'a': 1}"),
    ("dataset: [d.jsonl, [1]]", "dataset: expected text, got [1]"),
    ("max_steps: 1.7", "max_steps: expected a whole number, got 1.7"),      # ran 1 step
    ("learning_rate: true", "learning_rate: expected a number, got True"),   # trained at 1.0
    ("on: 1", "{recipe}: True is not an option name (quote it if it is text)"),
])
def test_recipe_values_of_the_wrong_type_are_one_line(capsys, tmp_path, line, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: Qwen/Qwen3-0.6B\n{line}\n")
    err = _error(capsys, ["sft", "--config", str(recipe), "--output_dir", str(tmp_path / "run")] if "output_dir" not in
                 line else ["sft", "--config", str(recipe)])
    assert err == "wb: error: " + message.replace("{recipe}", str(recipe))


def test_unknown_flag_of_data_preview(capsys):
    err = _error(capsys, ["data", "preview", "--model", "m", "--dataset", "d", "--deepspeed"])
    assert err == "wb: error: unknown flag --deepspeed; see wb data preview --help"


@pytest.mark.parametrize("key, hint", [("learning_rat", "; did you mean 'learning_rate'?"),
                                       ("megatron", "; see wb dpo --help")])
def test_recipe_keys_share_the_cutoff(capsys, tmp_path, key, hint):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: Qwen/Qwen3-0.6B\n{key}: 1\n")
    assert _error(capsys, ["dpo", "--config", str(recipe)]) == f"wb: error: unknown key in {recipe} {key!r}{hint}"


def test_debug_is_read_as_an_option(capsys, tmp_path):
    """--debug false means no traceback (any --debug once meant one); a recipe's debug: true means one."""
    from swiftlike.errors import UserError

    argv = ["sft", *MODEL, "--dataset", str(tmp_path / "missing.jsonl"), "--output_dir", str(tmp_path / "r")]
    assert _error(capsys, [*argv, "--debug", "false"]).startswith("wb: error: dataset not found")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("debug: true\n")
    with pytest.raises(UserError, match="dataset not found"):
        main([*argv, "--config", str(recipe)])
    recipe.write_text("debug: true\nmax_steps: 1.5\n")  # an error in building the options: a traceback too
    with pytest.raises(UserError, match="max_steps: expected a whole number"):
        main([*argv, "--config", str(recipe)])


def test_an_empty_recipe_key_is_a_one_line_error(capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: Qwen/Qwen3-0.6B\nmax_steps:\n")  # (was a TypeError traceback)
    assert _error(capsys, ["sft", "--config", str(recipe), "--dataset", "d.jsonl"]) == \
        "wb: error: max_steps: needs a value, got none"


def test_python_keywords_share_the_cutoff():
    import swiftlike as wb
    from swiftlike.errors import UserError

    with pytest.raises(UserError, match=r"^unknown argument 'megatron'$"):
        wb.sft(model="Qwen/Qwen3-0.6B", dataset=["d.jsonl"], megatron="mcore.json")


def _closed_pipe(code: str) -> tuple[int, str]:
    """Run `code` with its standard output a pipe whose reader has gone (as `| head -1` leaves it)."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    return proc.wait(), err


def test_closed_pipe_exits_quietly():
    code, err = _closed_pipe("import sys, time; time.sleep(1); from swiftlike.cli.main import main; "
                             "sys.exit(main(['env', '--json']))")
    assert (code, err) == (1, "")


def test_other_broken_pipes_still_raise():
    """A BrokenPipeError that is not about standard output (a socket, a worker) is a real error."""
    code = ("import sys; from swiftlike.cli import main as m\n"
            "def run(argv): raise BrokenPipeError(32, 'connection to the rollout server')\n"
            "m._run = run\nsys.exit(m.main([]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 1 and "BrokenPipeError: [Errno 32] connection to the rollout server" in out.stderr


def test_pair_report_is_in_the_unit_max_length_limits(qwen3_tokenizer):
    from swiftlike.data.dataset import DataStats, load_rows
    from swiftlike.data.pairs import encode_pairs
    from swiftlike.templates import get_template

    template = get_template("qwen3", qwen3_tokenizer)
    stats = DataStats()
    pairs, stats = encode_pairs(load_rows(["preference-demo"], task="preference", stats=stats), template, 32, stats)
    first, second = stats.report().splitlines()
    assert first == "pairs read 12, kept 6, dropped 6 (chosen or rejected with the prompt longer than max_length 32)"
    longest = max(max(p["chosen"]["length"], p["rejected"]["length"]) for p in pairs)
    tokens = sum(p["chosen"]["length"] + p["rejected"]["length"] for p in pairs)
    assert longest <= 32
    assert second.startswith(f"tokens {tokens} (trained {stats.trained_tokens}); length (the longer of chosen and "
                             f"rejected, prompt included) p50 ")
    assert second.endswith(f" max {longest}")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def transformers_log():
    handler = _Records()
    log = logging.getLogger("transformers")
    log.addHandler(handler)
    yield handler.messages
    log.removeHandler(handler)


def _said(capsys) -> list[str]:
    """Lines of standard error that are not progress bars."""
    err = capsys.readouterr().err
    assert "LOAD REPORT" not in err and "MISSING" not in err
    return [line for line in err.splitlines() if line.strip() and "it/s]" not in line]


def test_reward_head_is_one_line_new_or_loaded(tmp_path, capsys, transformers_log):
    import torch

    from swiftlike.models import build_miniature
    from swiftlike.models.loader import load_model

    base = tmp_path / "base"
    build_miniature("Qwen/Qwen3-0.6B").save_pretrained(base)
    model = load_model(str(base), torch.float32, reward_head=True, pad_token_id=0)
    assert not [m for m in transformers_log if "LOAD REPORT" in m]
    assert _said(capsys) == [f"[wb] reward head: new (not in {base}; a randomly initialised score layer that "
                             "training learns)"]
    full = tmp_path / "full"
    model.save_pretrained(full)
    load_model(str(full), torch.float32, reward_head=True, pad_token_id=0)
    assert _said(capsys) == [f"[wb] reward head: loaded from {full}"]
    load_model(str(base), torch.float32, reward_head=True, pad_token_id=0, announce_head=False)
    assert _said(capsys) == []
    assert not [m for m in transformers_log if "LOAD REPORT" in m]


def test_reward_head_report_stays_when_other_weights_are_missing(tmp_path, capsys, transformers_log):
    import torch
    from safetensors.torch import load_file, save_file

    from swiftlike.models import build_miniature
    from swiftlike.models.loader import load_model

    base = tmp_path / "base"
    build_miniature("Qwen/Qwen3-0.6B").save_pretrained(base)
    weights = base / "model.safetensors"
    state = load_file(str(weights))
    save_file({k: v for k, v in state.items() if "layers.1.mlp.down_proj" not in k}, str(weights),
              metadata={"format": "pt"})
    load_model(str(base), torch.float32, reward_head=True, pad_token_id=0)
    (report,) = [m for m in transformers_log if "LOAD REPORT" in m]
    assert "layers.1.mlp.down_proj.weight" in report


@pytest.mark.slow
def test_reward_model_run_and_inference_say_it_once(tmp_path, capsys, transformers_log):
    import swiftlike as wb

    out = tmp_path / "rm"
    wb.rm(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["preference-demo"], lora=True, max_steps=1,
          output_dir=str(out))
    err = capsys.readouterr().err
    assert err.count("[wb] reward head:") == 1
    assert f"[wb] reward head: new (not in {out / 'base_model'}" in err
    ckpt = out / "checkpoint-1"
    assert main(["infer", "--adapters", str(ckpt), "--query", "q", "--response", "a"]) == 0
    captured = capsys.readouterr()
    float(captured.out.strip())  # standard output is the score alone
    assert captured.err.count("[wb] reward head:") == 1 and f"[wb] reward head: loaded from {ckpt}\n" in captured.err
    assert not [m for m in transformers_log if "LOAD REPORT" in m]


@pytest.mark.parametrize("argv, message", [
    (["export", "--model", "m", "--quant_bits", "8"], "--quant_bits needs --quant_method"),  # wrote an unquantized one
    (["export", "--model", "m", "--gguf_type", "q8_0"], "--gguf_type needs --to gguf"),
    (["export", "--model", "m", "--hub_model_id", "me/x"],
     "--hub_model_id, --hub_private and --hub_token need --push_to_hub"),
    (["export", "--model", "m", "--hub_token", "t"],
     "--hub_model_id, --hub_private and --hub_token need --push_to_hub"),
    (["export", "--model", "m", "--dataset", "my.jsonl"], "--dataset (calibration rows) needs --quant_method"),
    (["export", "--model", "m", "--to", "gguf", "--max_shard_size", "2GB"],
     "--max_shard_size shards a Hugging Face export; a GGUF is one file"),
    (["rollout", "--model", "m", "--port", "70000"], "--port must be in 0..65535, got 70000"),  # after loading, once
    (["deploy", "--model", "m", "--port", "-5"], "--port must be in 0..65535, got -5"),
])
def test_options_that_mean_nothing_where_given_are_refused(capsys, argv, message):
    assert _error(capsys, argv) == f"wb: error: {message}"


def test_the_python_api_runs_what_it_is_asked(tmp_path):
    """wb.dpo(config=SFTConfig(...)) trained SFT; wb.sft(nproc_per_node=2) trained one process without a word."""
    import swiftlike as wb
    from swiftlike.config import SFTConfig
    from swiftlike.errors import UserError

    with pytest.raises(TypeError, match="this function takes a DPOConfig, got a SFTConfig"):
        wb.dpo(config=SFTConfig(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["d.jsonl"]))
    with pytest.raises(UserError, match="nproc_per_node / nnodes > 1 start several processes"):
        wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["d.jsonl"], nproc_per_node=2,
               output_dir=str(tmp_path / "run"))


def test_mistakes_found_late_are_found_before_any_work(capsys):
    """Both were reported only after the model loaded (the first without naming its flag)."""
    assert _error(capsys, ["infer", *MODEL, "--query", "q", "--num_return_sequences", "0"]) == \
        "wb: error: --num_return_sequences must be at least 1, got 0"
    assert _error(capsys, ["sft", *MODEL, "--dataset", "identity#5", "--streaming", "--max_steps", "2"]) == \
        "wb: error: --dataset identity#5: '#N' selection needs the whole source; it does not combine with --streaming"
