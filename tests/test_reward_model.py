"""wb rm: Bradley-Terry loss equal to TRL's, learning, validation accuracy, scoring with wb infer."""
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

import swiftlike as wb
from swiftlike.cli.main import main
from swiftlike.train.dpo import reward_model_loss


@pytest.mark.parametrize("center, with_margin", [(None, False), (0.01, True)])
def test_reward_loss_matches_trl(center, with_margin):
    from trl import RewardTrainer

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 1, generator=g)
    margin = torch.rand(4, generator=g) if with_margin else None
    accel = SimpleNamespace(gather_for_metrics=lambda x: x, gather=lambda x: x)
    fake = SimpleNamespace(model=SimpleNamespace(training=False), args=SimpleNamespace(center_rewards_coefficient=center),
                           accelerator=accel, _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0,
                           _tp_size=1)
    inputs = {"input_ids": torch.zeros(8, 3, dtype=torch.long), "attention_mask": torch.ones(8, 3)}
    if with_margin:
        inputs["margin"] = margin
    trl_loss = RewardTrainer.compute_loss(fake, lambda **kw: SimpleNamespace(logits=logits), inputs)
    ours = reward_model_loss(logits[:4, 0], logits[4:, 0], margin, center).mean()
    torch.testing.assert_close(ours, trl_loss, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_reward_model_learns_and_scores(tmp_path, capsys):
    out = tmp_path / "rm"
    result = wb.rm(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["preference-demo"], lora=True,
                   learning_rate=1e-2, max_steps=20, per_device_train_batch_size=4, logging_steps=1,
                   split_ratio=0.25, save_steps=10, output_dir=str(out))
    history = result.log_history
    train = [h for h in history if "accuracy" in h]
    assert sum(h["accuracy"] for h in train[-5:]) / 5 > 0.9 and train[-1]["loss"] < train[0]["loss"]
    assert "eval_accuracy" in result.metrics and "eval_loss" in result.metrics
    capsys.readouterr()
    ckpt = str(out / "checkpoint-20")
    q = "What is the capital of France?"
    assert main(["infer", "--adapters", ckpt, "--query", q, "--response", "The capital of France is Paris."]) == 0
    good = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["infer", "--adapters", ckpt, "--query", q, "--response", "I am not sure, maybe Lyon."]) == 0
    bad = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert good > bad


@pytest.mark.slow
def test_full_reward_model_keeps_its_head(tmp_path, capsys):
    out = tmp_path / "rm"
    wb.rm(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["preference-demo"], full=True, learning_rate=1e-3,
          max_steps=2, output_dir=str(out))
    capsys.readouterr()
    assert main(["infer", "--model", str(out / "checkpoint-2"), "--query", "q", "--response", "a"]) == 0
    first = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["infer", "--model", str(out / "checkpoint-2"), "--query", "q", "--response", "a"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == first  # the saved head, not a fresh random one


@pytest.mark.slow
def test_a_reward_model_starts_from_sft_adapters(tmp_path, capsys):
    """`wb rm --adapters SFT_CHECKPOINT` (the usual RLHF order) was a peft AttributeError traceback: now the
    language model's LoRA weights start the reward model, its new score head trains beside them, and the
    checkpoint scores answers."""
    from safetensors.torch import load_file

    sft = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["examples/data/identity.jsonl"], lora=True,
                 learning_rate=1e-2, max_steps=2, output_dir=str(tmp_path / "sft"))
    rm = wb.rm(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["preference-demo"], adapters=sft.checkpoint,
               learning_rate=1e-12, max_steps=1, output_dir=str(tmp_path / "rm"))
    before, after = load_file(f"{sft.checkpoint}/adapter_model.safetensors"), \
        load_file(f"{rm.checkpoint}/adapter_model.safetensors")
    lora = [k for k in before if "lora_A" in k]
    assert lora and all(torch.allclose(before[k], after[k], atol=1e-6) for k in lora)
    assert any("score" in k for k in after)
    capsys.readouterr()
    assert main(["infer", "--adapters", rm.checkpoint, "--query", "q", "--response", "a"]) == 0
    float(capsys.readouterr().out.strip().splitlines()[-1])
