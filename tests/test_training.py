"""Training behaviour end to end on miniature Qwen3 models (CPU, seeded)."""
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import swiftlike as wb
from swiftlike.cli.main import main
from conftest import wb_cli

DATA = "examples/data/identity.jsonl"
BASE = dict(model="Qwen/Qwen3-0.6B", miniature=True, dataset=[DATA], logging_steps=1,
            torch_dtype="float32")  # equivalence checks need fp32 (auto picks bf16 on GPUs)


def _adapter(ckpt) -> dict:
    return load_file(str(Path(ckpt) / "adapter_model.safetensors"))


def _assert_same(a: dict, b: dict, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0 if atol == 0 else 1e-5, msg=k)


def _assert_equivalent_runs(history_a, history_b, weights_a, weights_b):
    """Same losses and gradient norms step by step, up to float32 rounding (summation order differs).

    Weights get a looser bound: Adam divides by sqrt(v), so in entries whose gradient is ~0 (LoRA A
    while B is still near zero) it turns rounding noise into updates of up to lr in size.
    """
    for key in ("loss", "grad_norm"):
        assert [h[key] for h in history_a] == pytest.approx([h[key] for h in history_b], rel=1e-4), key
    _assert_same(weights_a, weights_b, atol=1e-3)


def _without_timing(history):
    return [{k: v for k, v in h.items() if k != "tokens_per_second"} for h in history]


@pytest.mark.slow
def test_lora_learns_and_writes_hf_layout(tmp_path):
    result = wb.sft(**BASE, lora=True, learning_rate=1e-2, max_steps=40, output_dir=str(tmp_path / "run"))
    assert result.metrics["final_loss"] < 0.4 * result.metrics["first_loss"]
    ckpt = Path(result.checkpoint)
    assert ckpt.name == "checkpoint-40"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer_config.json", "args.json",
                 "trainer_state.json", "trainer_state.pt"):
        assert (ckpt / name).is_file(), name
    mode = (ckpt / "adapter_config.json").stat().st_mode & 0o777
    assert (ckpt / "adapter_model.safetensors").stat().st_mode & 0o777 == mode  # (safetensors writes 0600)
    args = json.loads((ckpt / "args.json").read_text())
    assert args["train_type"] == "lora" and args["template"] == "qwen3" and args["lora_rank"] == 8
    assert json.loads((tmp_path / "run" / "args.json").read_text()) == args
    config = json.loads((ckpt / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 32
    assert {m.rsplit(".", 1)[-1] for m in config["target_modules"]} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"}


@pytest.mark.slow
def test_every_trainable_parameter_changes_and_frozen_ones_do_not(tmp_path):
    from swiftlike.config import SFTConfig, build_config
    from swiftlike.data.collate import collate_padding_free
    from swiftlike.data.dataset import encode_rows, load_rows
    from swiftlike.models import attach_lora, build_miniature, load_tokenizer
    from swiftlike.templates import get_template
    from swiftlike.train.trainer import LoopSettings, Trainer
    import dataclasses

    cfg = build_config(SFTConfig, dict(BASE, lora=True, output_dir=str(tmp_path), learning_rate=1e-2))
    tok = load_tokenizer(cfg.model)
    rows, _ = encode_rows(load_rows(cfg.dataset), get_template("qwen3", tok), 512)
    model = attach_lora(build_miniature(cfg.model), cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    settings = LoopSettings(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(LoopSettings)})
    trainer = Trainer(model, tok, rows, collate_padding_free, settings, "{}")
    trainer.train_step([collate_padding_free(rows[:4])])
    trainer.train_step([collate_padding_free(rows[4:8])])
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        assert changed == p.requires_grad, name


@pytest.mark.slow
def test_full_training_of_the_parameters_selected_by_name(tmp_path, capsys):
    """--full --trainable_parameters / --freeze_parameters: exactly the weights of layer 1 outside its MLP, and the
    final norm, change; every other weight is the base's. --dry_run plans that many trainable parameters; a
    pattern that matches nothing, a pattern with LoRA, or one that is not a regular expression is one line."""
    select = ["--trainable_parameters", r"layers\.1\.", r"model\.norm\.", "--freeze_parameters", "mlp"]
    common = ["sft", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--dataset", DATA, "--full", "--torch_dtype",
              "float32"]
    assert main(common + [*select, "--max_steps", "2", "--output_dir", str(tmp_path / "run")]) == 0
    trained = int(re.search(r"trainable ([\d,]+) /", capsys.readouterr().out).group(1).replace(",", ""))
    after = load_file(str(tmp_path / "run" / "checkpoint-2" / "model.safetensors"))
    base = load_file(str(tmp_path / "run" / "base_model" / "model.safetensors"))
    chosen = {n for n in after if (".layers.1." in n and ".mlp." not in n) or n.startswith("model.norm.")}
    assert chosen and sum(after[n].numel() for n in chosen) == trained
    for name in after:
        assert torch.equal(after[name], base[name]) != (name in chosen), name
    assert main(common + [*select, "--dry_run"]) == 0
    assert f"; {trained:,} trainable" in capsys.readouterr().out
    # another selection of as many values would load the saved moments into other parameters
    other = [r"layers\.0\." if a == r"layers\.1\." else a for a in select]
    assert main(common + [*other, "--max_steps", "4", "--output_dir", str(tmp_path / "run"), "--resume"]) == 2
    assert "trained other parameters (--trainable_parameters layers\\.1\\. model\\.norm\\. --freeze_parameters mlp)" \
        in capsys.readouterr().err
    same = [r"model\.norm\.", r"layers\.1\.", "--freeze_parameters", "mlp"]  # (reordered: the same parameters)
    assert main(common + ["--trainable_parameters", *same, "--max_steps", "3", "--output_dir",
                          str(tmp_path / "run"), "--resume"]) == 0
    for args, said in ((["--trainable_parameters", r"layer\.1\."], r"--trainable_parameters 'layer\.1\.' matches no"),
                       (["--lora", "--freeze_parameters", "mlp"], "--freeze_parameters chooses what trains under"),
                       (["--freeze_parameters", "("], "--freeze_parameters '(' is not a regular expression"),
                       # what the run says it trains may not be frozen: new tokens' rows, a new reward head
                       (["--new_special_tokens", "<tool>", "--freeze_parameters", "embed_tokens"],
                        "freeze the embedding rows of the new tokens (<tool>), which would never learn"),
                       (["--trainable_parameters", "visual", "--model", "Qwen/Qwen2.5-VL-3B-Instruct", "--dry_run"],
                        "--trainable_parameters is not supported on a vision-language model")):
        assert main([c for c in common if c != "--full" or "--lora" not in args] + args) == 2
        assert said in capsys.readouterr().err
    rm = ["rm", *common[1:5], "swiftlike/assets/datasets/preference_demo.jsonl", "--full"]
    assert main(rm + ["--trainable_parameters", r"layers\.1\.", "--output_dir", str(tmp_path / "rm")]) == 2
    assert "freeze the reward model's score layer" in capsys.readouterr().err
    assert main(rm + ["--trainable_parameters", r"layers\.1\.", "score", "--dry_run"]) == 0  # its score layer
    planned = capsys.readouterr().out
    assert main(rm + ["--trainable_parameters", r"layers\.1\.", "score", "--max_steps", "1", "--output_dir",
                      str(tmp_path / "rm")]) == 0
    ran = re.search(r"trainable ([\d,]+) /", capsys.readouterr().out).group(1)
    assert f"; {ran} trainable" in planned


@pytest.mark.slow
def test_resume_reaches_the_same_weights(tmp_path):
    common = dict(BASE, lora=True, learning_rate=1e-2, max_steps=6, save_steps=3, per_device_train_batch_size=2)
    out = tmp_path / "run"
    wb.sft(**common, output_dir=str(out))
    uninterrupted = _adapter(out / "checkpoint-6")
    history = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    shutil.rmtree(out / "checkpoint-6")
    resumed = wb.sft(**common, output_dir=str(out), resume=True)
    _assert_same(uninterrupted, _adapter(resumed.checkpoint))
    assert _without_timing(resumed.log_history) == _without_timing(history)


@pytest.mark.slow
def test_8bit_adamw_trains_saves_quantized_moments_and_resumes_exactly(tmp_path, capsys):
    """--optim adamw_8bit (torchao): rank-64 adapters (4,096-value matrices: quantized), the moments saved as 8-bit
    states with --adam_beta2 in their groups, a resume that reaches the uninterrupted run's weights exactly, and a
    resume under another --optim refused (its state is not that optimizer's)."""
    common = dict(BASE, lora=True, lora_rank=64, learning_rate=1e-2, max_steps=4, save_steps=2,
                  per_device_train_batch_size=2, optim="adamw_8bit", adam_beta2=0.95)
    out = tmp_path / "run"
    first = wb.sft(**common, output_dir=str(out))
    assert first.metrics["final_loss"] < first.metrics["first_loss"]
    uninterrupted = _adapter(out / "checkpoint-4")
    saved = torch.load(out / "checkpoint-2" / "trainer_state.pt", weights_only=True)
    assert saved["optim"] == "adamw_8bit" and saved["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    kinds = [type(s["exp_avg_sq"]).__name__ for s in saved["optimizer"]["state"].values()]
    assert kinds.count("OptimState8bit") >= len(kinds) / 2  # (matrices under 4,096 values keep fp32 moments)
    assert json.loads((out / "args.json").read_text())["optim"] == "adamw_8bit"
    shutil.rmtree(out / "checkpoint-4")
    _assert_same(uninterrupted, _adapter(wb.sft(**common, output_dir=str(out), resume=True).checkpoint))
    capsys.readouterr()
    assert main(["sft", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--dataset", DATA, "--lora_rank", "64",
                 "--output_dir", str(out), "--resume_from_checkpoint", str(out / "checkpoint-2"),
                 "--overwrite_output_dir", "--max_steps", "6"]) == 2
    assert "was trained with --optim adamw_8bit, this run asks for --optim adamw" in capsys.readouterr().err
    assert (out / "checkpoint-4").is_dir()  # the refusal loses nothing


@pytest.mark.slow
def test_killed_run_leaves_only_complete_checkpoints_and_resumes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "swiftlike.cli.main", "sft", "--model", "Qwen/Qwen3-0.6B", "--miniature",
           "--dataset", DATA, "--lora", "--max_steps", "400", "--save_steps", "1", "--output_dir", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoint-3").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpts = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(ckpts) >= 3
    for ckpt in ckpts:
        for name in ("adapter_model.safetensors", "args.json", "trainer_state.json", "trainer_state.pt"):
            assert (ckpt / name).is_file(), f"{ckpt.name}/{name}"
    step = int(ckpts[-1].name.split("-")[1])
    resumed = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=[DATA], lora=True, max_steps=step + 2,
                     save_steps=1, output_dir=str(out), resume=True)
    assert resumed.metrics["steps"] == step + 2


@pytest.mark.slow
def test_gradient_accumulation_is_invariant(tmp_path):
    common = dict(BASE, lora=True, lora_dropout=0.0, learning_rate=1e-2, max_steps=3)
    a = wb.sft(**common, per_device_train_batch_size=4, gradient_accumulation_steps=1, output_dir=str(tmp_path / "a"))
    b = wb.sft(**common, per_device_train_batch_size=1, gradient_accumulation_steps=4, output_dir=str(tmp_path / "b"))
    _assert_equivalent_runs(a.log_history, b.log_history, _adapter(a.checkpoint), _adapter(b.checkpoint))


@pytest.mark.slow
def test_padding_free_equals_padded(tmp_path):
    common = dict(BASE, lora=True, lora_dropout=0.0, learning_rate=1e-2, max_steps=3)
    a = wb.sft(**common, padding_free=True, output_dir=str(tmp_path / "a"))
    b = wb.sft(**common, padding_free=False, output_dir=str(tmp_path / "b"))
    _assert_equivalent_runs(a.log_history, b.log_history, _adapter(a.checkpoint), _adapter(b.checkpoint))
    assert a.metrics["padding_efficiency"] == 1.0 > b.metrics["padding_efficiency"]


@pytest.mark.slow
def test_full_mode_trains_all_parameters(tmp_path):
    result = wb.sft(**BASE, full=True, learning_rate=1e-3, max_steps=8, output_dir=str(tmp_path / "run"))
    ckpt = Path(result.checkpoint)
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "config.json").is_file()
    assert result.metrics["final_loss"] < result.metrics["first_loss"]
    args = json.loads((ckpt / "args.json").read_text())
    assert args["train_type"] == "full" and args["learning_rate"] == 1e-3


@pytest.mark.slow
def test_qlora_trains_on_a_4bit_base(tmp_path):
    pytest.importorskip("bitsandbytes")
    result = wb.sft(**BASE, qlora=True, learning_rate=1e-2, max_steps=4, output_dir=str(tmp_path / "run"))
    assert result.metrics["final_loss"] < result.metrics["first_loss"]
    assert (Path(result.checkpoint) / "adapter_model.safetensors").is_file()
    assert json.loads((Path(result.checkpoint) / "args.json").read_text())["train_type"] == "qlora"


@pytest.mark.slow
@pytest.mark.usefixtures("cpu_processes")
def test_two_processes_match_one_process_with_twice_the_batch(tmp_path):
    flags = ["--model", "Qwen/Qwen3-0.6B", "--miniature", "--dataset", DATA, "--lora", "--lora_dropout", "0",
             "--learning_rate", "1e-2", "--max_steps", "4", "--logging_steps", "1"]
    wb_cli("sft", *flags, "--nproc_per_node", "2", "--per_device_train_batch_size", "2", "--output_dir",
           str(tmp_path / "two"), OMP_NUM_THREADS="1")
    one = wb.sft(**BASE, lora=True, lora_dropout=0.0, learning_rate=1e-2, max_steps=4, per_device_train_batch_size=4,
                 output_dir=str(tmp_path / "one"))
    two_history = json.loads((tmp_path / "two" / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    _assert_equivalent_runs(two_history, one.log_history, _adapter(tmp_path / "two" / "checkpoint-4"),
                            _adapter(one.checkpoint))


@pytest.mark.slow
def test_recipe_with_flag_override_and_infer(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: Qwen/Qwen3-0.6B\nminiature: true\ndataset: {DATA}\nlora: true\n"
                      f"learning_rate: 0.01\nmax_steps: 50\noutput_dir: {tmp_path / 'run'}\n")
    assert main(["sft", "--config", str(recipe), "--max_steps", "60", "--logging_steps", "60"]) == 0
    ckpt = tmp_path / "run" / "checkpoint-60"
    args = json.loads((ckpt / "args.json").read_text())
    assert args["max_steps"] == 60 and args["learning_rate"] == 0.01
    capsys.readouterr()
    assert main(["infer", "--adapters", str(ckpt), "--query", "Who are you?", "--max_new_tokens", "24"]) == 0
    answer = capsys.readouterr().out.strip().splitlines()[-1]
    assert "Wren" in answer


@pytest.mark.slow
def test_tensorboard_logging_and_interactive_chat(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    wb.sft(**BASE, lora=True, max_steps=2, report_to="tensorboard", output_dir=str(out))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "runs"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2]
    assert "learning_rate" in events.Tags()["scalars"]
    answers = iter(["Hi", "clear", "Hello again", "exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    capsys.readouterr()
    assert main(["infer", "--adapters", str(out / "checkpoint-2"), "--max_new_tokens", "4"]) == 0
    assert capsys.readouterr().out.count("assistant> ") == 2


@pytest.mark.slow
def test_existing_checkpoints_are_never_silently_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    wb.sft(**BASE, lora=True, max_steps=1, output_dir=str(out))
    capsys.readouterr()
    argv = ["sft", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--dataset", DATA, "--max_steps", "2",
            "--output_dir", str(out)]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (f"wb: error: {out} already holds checkpoint-1; add --resume to continue "
                                               "it, --overwrite_output_dir to start again there, or choose another "
                                               "--output_dir")
    assert main(argv + ["--overwrite_output_dir"]) == 0
    assert (out / "checkpoint-2").is_dir()


@pytest.mark.parametrize("n_rows, size", [(40, 16), (10, 4), (12, 4), (3, 8)])
def test_every_row_is_trained_once_an_epoch(n_rows, size):
    """An epoch's last step once dropped the rows that did not fill it (40 rows at 16 a step: 8 rows, 20%, unseen
    each epoch); it is now completed with the epoch's first rows, so every step keeps its full batch."""
    from swiftlike.train.trainer import chunks_per_epoch, epoch_chunk

    per_epoch = chunks_per_epoch(n_rows, size)
    for epoch in range(2):
        chunks = [epoch_chunk(epoch * per_epoch + k, n_rows, size, seed=7) for k in range(per_epoch)]
        seen = [i for chunk in chunks for i in chunk]
        assert all(len(chunk) == size for chunk in chunks) and set(seen) == set(range(n_rows))
        assert len(seen) - n_rows == per_epoch * size - n_rows  # repeats: only what completes the last step


def test_lora_plus_raises_the_b_matrices_learning_rate(tmp_path, capsys):
    """LoRA+: after one step from B = 0 (A's gradient is zero then), Adam moves every B entry by its learning rate:
    --learning_rate without the flag, 16x with --lora_plus_ratio 16."""
    common = dict(BASE, lora=True, max_steps=1, learning_rate=1e-3, lr_scheduler_type="constant", warmup_ratio=0.0,
                  weight_decay=0.0, lora_dropout=0.0)
    moved = {}
    for ratio in (None, 16.0):
        run = wb.sft(**common, lora_plus_ratio=ratio, output_dir=str(tmp_path / str(ratio)))
        weights = _adapter(run.checkpoint)
        moved[ratio] = max(float(w.abs().max()) for n, w in weights.items() if ".lora_B." in n)
        assert json.loads((tmp_path / str(ratio) / "args.json").read_text())["lora_plus_ratio"] == ratio
    assert moved[None] == pytest.approx(1e-3, rel=1e-3) and moved[16.0] == pytest.approx(16e-3, rel=1e-3)
    assert main(["sft", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--dataset", DATA, "--full",
                 "--lora_plus_ratio", "16"]) == 2
    assert "--lora_plus_ratio must be positive and needs LoRA adapters" in capsys.readouterr().err
