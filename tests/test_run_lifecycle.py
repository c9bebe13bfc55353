"""What a user meets around a run: resuming a finished run, Ctrl-C, failed runs, bad lines, log lines, defaults."""
import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch

import swiftlike as wb
from swiftlike.cli.main import main
from swiftlike.config import SFTConfig
from swiftlike.data.dataset import DataStats, load_rows
from swiftlike.errors import UserError
from swiftlike.train import trainer as trainer_module

IDENTITY = "examples/data/identity.jsonl"
BASE = ["sft", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--dataset", IDENTITY, "--lora"]


def _state(ckpt) -> dict:
    return json.loads((ckpt / "trainer_state.json").read_text())


@pytest.mark.slow
def test_resume_of_a_finished_run_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(BASE + ["--max_steps", "2", "--output_dir", str(out)]) == 0
    first = capsys.readouterr().out
    assert main(BASE + ["--max_steps", "2", "--output_dir", str(out), "--resume"]) == 0
    captured = capsys.readouterr()
    assert "already ran all 2 planned steps: nothing to train" in captured.out
    assert "--max_steps 4" in captured.out and "Traceback" not in captured.err
    # training further: the summary's first loss is the run's first, not the first after resuming
    assert main(BASE + ["--max_steps", "4", "--output_dir", str(out), "--resume", "--per_device_train_batch_size",
                        "2"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert f"[wb] resuming from {out / 'checkpoint-2'} (step 2 of 4); options changed since it was saved (the run " \
           "goes on differently): global batch 4 -> 2 (--per_device_train_batch_size x " \
           "--gradient_accumulation_steps x processes)" in printed  # (it was silent)
    done = [line for line in printed if line.startswith("[wb] done")][0]
    first_loss = [line for line in first.splitlines() if line.startswith("[wb] done")][0].split("loss ")[1][:7]
    assert done.split("loss ")[1].startswith(first_loss)
    assert _state(out / "checkpoint-4")["first_loss"] == pytest.approx(float(first_loss), abs=1e-4)


def test_the_resume_line_tolerates_a_checkpoint_without_readable_args(tmp_path):
    """A hand-edited (broken) args.json made the resume hint a JSONDecodeError traceback."""
    from types import SimpleNamespace

    from swiftlike.config import SFTConfig
    from swiftlike.pipelines.sft import resume_line

    ckpt = tmp_path / "checkpoint-1"
    ckpt.mkdir()
    trainer = SimpleNamespace(step=1, total_steps=2, resumed_plan=None, stopped_early=False)
    cfg = SFTConfig(learning_rate=1e-3)
    assert resume_line(ckpt, trainer, cfg) == f"[wb] resuming from {ckpt} (step 1 of 2)"
    (ckpt / "args.json").write_text("{oops")
    assert resume_line(ckpt, trainer, cfg) == f"[wb] resuming from {ckpt} (step 1 of 2)"
    (ckpt / "args.json").write_text(json.dumps({"learning_rate": 1e-2}))
    assert "--learning_rate 0.01 -> 0.001" in resume_line(ckpt, trainer, cfg)
    # the rows of a step: 2 processes x 2 is 1 process x 2 x accumulation 2 (no change); 2 x 2 -> 1 x 2 is one
    saved = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "nproc_per_node": 2}
    (ckpt / "args.json").write_text(json.dumps(saved))
    same = SFTConfig(per_device_train_batch_size=2, gradient_accumulation_steps=2)
    assert resume_line(ckpt, trainer, same) == f"[wb] resuming from {ckpt} (step 1 of 2)"
    assert "global batch 4 -> 2" in resume_line(ckpt, trainer, SFTConfig(per_device_train_batch_size=2))
    # a preference run's objective and reference (its starting adapters) were resumed changed without a word
    from swiftlike.config import DPOConfig

    (ckpt / "args.json").write_text(json.dumps({"beta": 0.1, "adapters": "runs/sft/checkpoint-2",
                                                "loss_type": "sigmoid"}))
    line = resume_line(ckpt, trainer, DPOConfig(beta=0.5, loss_type="ipo"))
    assert "--adapters runs/sft/checkpoint-2 -> None" in line and "--beta 0.1 -> 0.5" in line
    assert "--loss_type sigmoid -> ipo" in line
    # the same options planning another number of steps (a checkpoint of a swiftlike whose epochs dropped their
    # last partial step) is said too
    (ckpt / "args.json").write_text(json.dumps({"max_steps": -1, "num_train_epochs": 1.0}))
    trainer.resumed_plan = 6  # (read from the checkpoint's trainer_state.json)
    assert resume_line(ckpt, trainer, cfg).endswith("(the run goes on differently): planned steps 6 -> 2")


def _interrupt_at(monkeypatch, steps: tuple[int, ...], sig=signal.SIGINT):
    """Deliver SIGINT (as Ctrl-C does) while the trainer is drawing the batches of these steps (0-based)."""
    original = trainer_module.Trainer.next_batches

    def next_batches(self):
        if self.step in steps:
            os.kill(os.getpid(), sig)
        return original(self)

    monkeypatch.setattr(trainer_module.Trainer, "next_batches", next_batches)


def test_sigterm_stops_as_ctrl_c_does(tmp_path, monkeypatch, capfd):
    """A scheduler's SIGTERM (preemption) finishes the step and saves it; it killed the run, losing the steps since
    the last checkpoint."""
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, (1,), signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=[IDENTITY], lora=True, max_steps=4, save_steps=100,
               output_dir=str(out))
    captured = capfd.readouterr()  # (the notice is written to the descriptor: a signal handler's write)
    assert "[wb] SIGTERM: finishing this step and saving a checkpoint" in captured.err
    last = captured.out.splitlines()[-1]
    assert last == f"[wb] stopped at step 2 of 4; --resume continues from {out / 'checkpoint-2'}"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # given back


@pytest.mark.slow
def test_ctrl_c_finishes_the_step_saves_and_resume_continues(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, (2,))
    with pytest.raises(KeyboardInterrupt):
        wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=[IDENTITY], lora=True, max_steps=6, save_steps=100,
               output_dir=str(out))
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == f"[wb] stopped at step 3 of 6; --resume continues from {out / 'checkpoint-3'}"
    assert (out / "checkpoint-3" / "adapter_model.safetensors").is_file()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # written atomically
    monkeypatch.undo()
    result = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=[IDENTITY], lora=True, max_steps=6,
                    save_steps=100, output_dir=str(out), resume=True)
    assert result.metrics["steps"] == 6 and result.checkpoint.endswith("checkpoint-6")


@pytest.mark.slow
def test_an_older_runs_later_checkpoints_never_outrank_this_runs(tmp_path, monkeypatch, capsys):
    """--overwrite_output_dir over a run that went further: its later checkpoints once stayed 'latest', so
    --save_total_limit deleted the new run's own checkpoints and Ctrl-C skipped a save at a step an old
    checkpoint had. Now they go at this run's first save; continuing an earlier checkpoint in that directory
    needs --overwrite_output_dir."""
    out = tmp_path / "run"
    kw = dict(model="Qwen/Qwen3-0.6B", miniature=True, dataset=[IDENTITY], lora=True, output_dir=str(out))
    wb.sft(max_steps=6, save_steps=3, **kw)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    (out / ".tmp-checkpoint-5").mkdir()  # half-written when that run was killed: gone at the next save
    result = wb.sft(max_steps=4, save_steps=2, save_total_limit=1, overwrite_output_dir=True, **kw)
    assert not (out / ".tmp-checkpoint-5").exists()
    assert result.checkpoint == str(out / "checkpoint-4")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]
    _state(out / "checkpoint-4")  # this run's (its own trainer state)
    wb.sft(max_steps=6, save_steps=3, overwrite_output_dir=True, **kw)
    with pytest.raises(UserError, match=r"holds checkpoint-6, later than checkpoint-3: continuing from "
                                        r"checkpoint-3 there replaces them; add --overwrite_output_dir"):
        wb.sft(max_steps=6, resume_from_checkpoint=str(out / "checkpoint-3"), **kw)
    _interrupt_at(monkeypatch, (3,))  # the branch from step 3, stopped after step 4: saved, the only latest
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        wb.sft(max_steps=6, save_steps=100, resume_from_checkpoint=str(out / "checkpoint-3"),
               overwrite_output_dir=True, **kw)
    assert capsys.readouterr().out.splitlines()[-1] == \
        f"[wb] stopped at step 4 of 6; --resume continues from {out / 'checkpoint-4'}"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]


@pytest.mark.slow
def test_second_ctrl_c_stops_at_once_and_names_the_resume_point(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, (2, 3))  # the second arrives before the requested stop is honoured
    monkeypatch.setattr(trainer_module.Trainer, "_stop", lambda self, bar: None)
    with pytest.raises(KeyboardInterrupt):
        wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=[IDENTITY], lora=True, max_steps=6, save_steps=2,
               output_dir=str(out))
    assert capsys.readouterr().out.splitlines()[-1] == \
        f"[wb] interrupted at step 3 of 6; --resume continues from {out / 'checkpoint-2'}"


@pytest.mark.slow
def test_ctrl_c_without_saving_before_any_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, (1,))
    assert main(BASE + ["--max_steps", "6", "--save_on_interrupt", "false", "--output_dir", str(out)]) == 130
    assert "[wb] stopped at step 2 of 6; no checkpoint yet: nothing to resume" in capsys.readouterr().out
    assert not out.exists()  # nothing worth keeping: the directory this run created is gone


def test_failed_run_leaves_no_directory_it_created(tmp_path, capsys):
    out = tmp_path / "new"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "only a question"}]}\n')
    assert main(BASE + ["--dataset", str(bad), "--output_dir", str(out)]) == 2
    assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert main(BASE + ["--dataset", str(bad), "--output_dir", str(kept)]) == 2
    assert (kept / "notes.txt").read_text() == "mine"
    assert "no assistant turn" in capsys.readouterr().err


def test_skip_bad_rows_skips_lines_that_are_not_json(tmp_path):
    path = tmp_path / "d.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    path.write_text(f"{good}\n{{oops\n[1, 2]\n{good}\n")
    stats = DataStats()
    rows = load_rows([str(path)], skip_bad_rows=True, stats=stats)
    assert len(rows) == 2
    assert stats.dropped == {"bad row: not valid JSON": 1, "bad row: expected a JSON object, got list": 1}
    with pytest.raises(UserError, match=rf"^{path}:2: not valid JSON \(Expecting property name"):
        load_rows([str(path)])


def test_logged_numbers_are_short_and_lines_are_whole(tmp_path, capsys):
    result = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=[IDENTITY], lora=True, max_steps=3,
                    logging_steps=1, learning_rate=3e-3, warmup_steps=1, output_dir=str(tmp_path / "r"))
    for entry in result.log_history:
        for key, value in entry.items():
            if isinstance(value, float):
                assert len(repr(value).replace("-", "").replace(".", "").lstrip("0").split("e")[0]) <= 6, (key, value)
    out = capsys.readouterr()
    logged = [line for line in out.out.splitlines() if line.startswith('{"step"')]
    assert [json.loads(line)["step"] for line in logged] == [1, 2, 3]
    assert "Saving the dataset" not in out.err  # the datasets library's own bars are silenced


def test_miniature_defaults_to_a_learning_rate_that_learns(tmp_path, capsys):
    assert SFTConfig(model="m", dataset=["x"], miniature=True).validate().learning_rate == 1e-2
    assert SFTConfig(model="m", dataset=["x"], miniature=True, full=True).validate().learning_rate == 1e-3
    assert SFTConfig(model="m", dataset=["x"], miniature=True, learning_rate=5e-4).validate().learning_rate == 5e-4
    result = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=[IDENTITY], lora=True, max_steps=30,
                    output_dir=str(tmp_path / "r"))
    assert "[wb] learning rate 0.01: the --miniature default" in capsys.readouterr().out
    assert result.metrics["final_loss"] < 0.5 * result.metrics["first_loss"]


def test_missing_tracker_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert main(BASE + ["--report_to", "wandb", "--output_dir", str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == "wb: error: --report_to wandb needs wandb: pip install wandb"
    assert "[wb] data" not in captured.out and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_miniature_of_another_model_is_rebuilt_not_trained(tmp_path):
    out = tmp_path / "run"
    assert main(BASE + ["--max_steps", "1", "--output_dir", str(out)]) == 0
    assert json.loads((out / "base_model" / "config.json").read_text())["model_type"] == "qwen3"
    other = ["sft", "--model", "meta-llama/Llama-3.2-1B-Instruct", "--miniature", "--dataset", IDENTITY, "--lora"]
    assert main(other + ["--max_steps", "1", "--output_dir", str(out), "--overwrite_output_dir"]) == 0
    assert json.loads((out / "base_model" / "config.json").read_text())["model_type"] == "llama"
    assert main(BASE + ["--max_steps", "2", "--output_dir", str(out), "--resume"]) == 2  # not Llama's weights


def test_schedules_with_a_floor_follow_their_formulas(tmp_path, capsys):
    """cosine_with_min_lr and warmup_stable_decay, 10 steps after 2 of warm-up, against their formulas (each
    logged rate is the one the next step uses: position t + 1)."""
    common = dict(model="Qwen/Qwen3-0.6B", miniature=True, dataset=[IDENTITY], lora=True, logging_steps=1,
                  max_steps=10, learning_rate=1e-3, warmup_steps=2, per_device_train_batch_size=2)

    def rates(**kw):
        run = wb.sft(**common, **kw, output_dir=str(tmp_path / kw["lr_scheduler_type"]))
        return [h["learning_rate"] for h in run.log_history if "loss" in h]

    def cosine(progress, floor):
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    expected = [1e-3 * (t / 2 if t < 2 else cosine((t - 2) / 8, 0.1)) for t in range(1, 11)]  # (default floor 0.1)
    assert rates(lr_scheduler_type="cosine_with_min_lr") == pytest.approx(expected, rel=1e-5)
    # 2 warm-up, 5 stable, the last 3 (0.3 x 10) decaying to 0.2
    expected = [1e-3 * (0.2 + 0.8 * t / 2 if t < 2 else 1.0 if t < 7 else cosine((t - 7) / 3, 0.2) if t < 10 else 0.2)
                for t in range(1, 11)]
    assert rates(lr_scheduler_type="warmup_stable_decay", lr_decay_ratio=0.3, min_lr_rate=0.2) == \
        pytest.approx(expected, rel=1e-5)
    capsys.readouterr()
    assert main(BASE + ["--min_lr_rate", "0.1", "--output_dir", str(tmp_path / "bad")]) == 2
    assert "--min_lr_rate sets the floor of cosine_with_min_lr and warmup_stable_decay" in capsys.readouterr().err
    assert main(BASE + ["--lr_decay_ratio", "0.2", "--output_dir", str(tmp_path / "bad")]) == 2
    assert "--lr_decay_ratio applies to --lr_scheduler_type warmup_stable_decay, not cosine" in capsys.readouterr().err


def test_a_resumed_run_trains_at_the_learning_rate_it_is_given(tmp_path, capsys):
    """The optimizer's and scheduler's saved states held the first session's learning rate and weight decay: a
    --learning_rate changed on resume was said to apply ("the run goes on differently") and silently did not."""
    common = dict(model="Qwen/Qwen3-0.6B", miniature=True, dataset=[IDENTITY], lora=True, logging_steps=1,
                  lr_scheduler_type="constant", warmup_ratio=0.0, output_dir=str(tmp_path / "run"))
    wb.sft(**common, max_steps=2, learning_rate=1e-3)
    capsys.readouterr()
    result = wb.sft(**common, max_steps=4, learning_rate=2e-3, weight_decay=0.5, adam_beta2=0.95, adam_epsilon=1e-6,
                    resume=True)
    said = capsys.readouterr().out
    assert "--learning_rate 0.001 -> 0.002" in said and "--adam_beta2 0.999 -> 0.95" in said
    assert [h["learning_rate"] for h in result.log_history if "loss" in h] == [1e-3, 1e-3, 2e-3, 2e-3]
    group = torch.load(Path(result.checkpoint) / "trainer_state.pt", weights_only=True)["optimizer"]["param_groups"][0]
    assert (group["weight_decay"], group["betas"], group["eps"]) == (0.5, (0.9, 0.95), 1e-6)
