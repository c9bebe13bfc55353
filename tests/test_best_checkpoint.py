"""The best checkpoint (lowest eval_loss; GRPO: highest eval_reward) is named at the end, recorded in
trainer_state.json under transformers' names and never deleted by --save_total_limit; --early_stopping_patience
ends a run whose validation metric stopped improving, with a checkpoint there; a resume with the same patience
trains no more, a larger one goes on with the count carried over. The validation values are scripted (the
evaluation itself is tested elsewhere), so every decision below is one the values force."""
import json

import pytest

import swiftlike as wb
from swiftlike.config import SFTConfig, build_config
from swiftlike.errors import UserError
from swiftlike.train.grpo_trainer import GRPOTrainer
from swiftlike.train.trainer import Trainer

SFT = dict(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["examples/data/identity.jsonl"], split_ratio=0.2,
           learning_rate=1e-3)


def _script(monkeypatch, cls, key, values):
    """`cls.evaluate` returns values[step - 1] as `key`."""
    monkeypatch.setattr(cls, "evaluate", lambda self: {key: values[self.step - 1]})


def _checkpoints(path):
    return sorted((p.name for p in path.glob("checkpoint-*")), key=lambda n: int(n.split("-")[1]))


def test_the_lowest_loss_is_kept_and_patience_ends_the_run(monkeypatch, tmp_path, capsys):
    _script(monkeypatch, Trainer, "eval_loss", [3.0, 2.0, 2.5, 2.0, 9.0, 9.0, 9.0, 9.0])
    result = wb.sft(**SFT, save_steps=1, save_total_limit=1, early_stopping_patience=2, max_steps=8,
                    output_dir=str(tmp_path))
    out = capsys.readouterr().out
    assert "[wb] early stop at step 4 of 8: eval_loss has not improved for 2 evaluations" in out  # (2.0 ties)
    assert result.best_checkpoint == str(tmp_path / "checkpoint-2")
    assert f"[wb] best checkpoint: {tmp_path / 'checkpoint-2'} (eval_loss 2.0)" in out
    assert _checkpoints(tmp_path) == ["checkpoint-2", "checkpoint-4"]  # the best beside the limit's newest
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    assert (state["best_model_checkpoint"], state["best_metric"]) == (str(tmp_path / "checkpoint-2"), 2.0)
    assert state["stopped_early"] and state["evals_without_improvement"] == 2
    again = wb.sft(**SFT, save_steps=1, save_total_limit=1, early_stopping_patience=2, max_steps=8,
                   output_dir=str(tmp_path), resume=True)  # (a scheduler rerunning the command)
    assert again.already_finished and _checkpoints(tmp_path) == ["checkpoint-2", "checkpoint-4"]
    assert "ended the run early at step 4" in capsys.readouterr().out
    more = wb.sft(**SFT, save_steps=1, save_total_limit=1, early_stopping_patience=3, max_steps=8,
                  output_dir=str(tmp_path), resume=True)  # one more evaluation of patience: 9.0 at step 5
    assert _checkpoints(tmp_path) == ["checkpoint-2", "checkpoint-5"]
    assert more.best_checkpoint == str(tmp_path / "checkpoint-2")


def test_a_better_checkpoint_replaces_the_best_and_the_old_one_may_go(monkeypatch, tmp_path):
    _script(monkeypatch, Trainer, "eval_loss", [3.0, 2.0, 1.0, 4.0])
    result = wb.sft(**SFT, save_steps=1, save_total_limit=1, max_steps=4, output_dir=str(tmp_path))
    assert result.best_checkpoint == str(tmp_path / "checkpoint-3")
    assert _checkpoints(tmp_path) == ["checkpoint-3", "checkpoint-4"]


def test_only_a_saved_step_can_be_the_best(monkeypatch, tmp_path):
    _script(monkeypatch, Trainer, "eval_loss", [3.0, 2.0, 1.0, 2.5])  # 1.0 at step 3, which is not saved
    result = wb.sft(**SFT, save_steps=2, eval_steps=1, max_steps=4, output_dir=str(tmp_path))
    assert result.best_checkpoint == str(tmp_path / "checkpoint-2")


def test_patience_on_the_last_step_finishes_the_run_as_planned(monkeypatch, tmp_path):
    _script(monkeypatch, Trainer, "eval_loss", [3.0, 4.0, 5.0, 6.0, 6.0, 6.0])
    wb.sft(**SFT, save_steps=3, eval_steps=1, early_stopping_patience=2, max_steps=3, output_dir=str(tmp_path))
    state = json.loads((tmp_path / "checkpoint-3" / "trainer_state.json").read_text())
    assert not state["stopped_early"] and state["evals_without_improvement"] == 2
    more = wb.sft(**SFT, save_steps=3, eval_steps=1, early_stopping_patience=2, max_steps=6, output_dir=str(tmp_path),
                  resume=True)  # a longer plan: the next evaluation without improvement ends it
    assert _checkpoints(tmp_path)[-1] == "checkpoint-4" and not more.already_finished


def test_grpo_keeps_the_highest_reward(monkeypatch, tmp_path):
    _script(monkeypatch, GRPOTrainer, "eval_reward", [1.0, 2.0, 1.5])
    result = wb.grpo(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["arithmetic#20"], reward_funcs=["length"],
                     split_ratio=0.2, num_generations=2, per_device_train_batch_size=4, max_completion_length=4,
                     max_steps=3, save_steps=1, output_dir=str(tmp_path))
    assert result.best_checkpoint == str(tmp_path / "checkpoint-2")


def test_patience_needs_validation_rows():
    with pytest.raises(UserError, match="--early_stopping_patience needs validation rows: add --val_dataset"):
        build_config(SFTConfig, {"model": "m", "dataset": ["d.jsonl"], "early_stopping_patience": 2})
