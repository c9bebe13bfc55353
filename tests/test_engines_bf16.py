"""bf16 full training keeps small updates: the optimizer is torchao's AdamW with stochastic rounding wherever the
trainable weights are bf16 (train/engines.adamw), where torch's AdamW rounds every update smaller than half a bf16
step away and the weights never move."""
import pytest
import torch

import swiftlike as wb
from swiftlike.train.engines import EngineSettings, adamw

SETTINGS = EngineSettings(learning_rate=1e-4, weight_decay=0.0, max_grad_norm=1.0, gradient_accumulation_steps=1)


def _steps(optimizer_of, n=200):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.ones(20000, dtype=torch.bfloat16))
    opt = optimizer_of([{"params": [p], "lr": 1e-4}])
    for _ in range(n):
        p.grad = torch.ones_like(p)
        opt.step()
    return float(p.float().mean())


def test_stochastic_rounding_keeps_updates_that_plain_bf16_adamw_loses(capsys):
    pytest.importorskip("torchao")
    assert _steps(lambda g: torch.optim.AdamW(g, lr=1e-4, weight_decay=0.0)) == 1.0  # 200 updates of 1e-4: lost
    assert _steps(lambda g: adamw(g, SETTINGS)) == pytest.approx(0.98, abs=2e-3)  # kept in expectation
    assert "bf16 stochastic rounding (torchao)" in capsys.readouterr().out
    # fp32 weights (LoRA adapters, --torch_dtype float32) keep torch's AdamW
    assert type(adamw([{"params": [torch.nn.Parameter(torch.ones(3))]}], SETTINGS)) is torch.optim.AdamW


def test_without_torchao_the_run_says_what_it_loses(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "torchao.optim", None)
    opt = adamw([{"params": [torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))]}], SETTINGS)
    assert type(opt) is torch.optim.AdamW
    assert "pip install torchao for stochastic rounding" in capsys.readouterr().err


@pytest.mark.slow
def test_full_training_in_bf16_moves_weights_by_less_than_a_bf16_step(tmp_path):
    """lr 1e-5 on weights of magnitude ~0.02 (bf16 step there ~1.2e-4): with stochastic rounding 6.4% of a matrix's
    weights moved in 3 steps, with torch's AdamW 1.6% (only the smallest weights, whose bf16 step is finer)."""
    pytest.importorskip("torchao")
    from safetensors.torch import load_file

    run = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["examples/data/identity.jsonl"], full=True,
                 torch_dtype="bfloat16", learning_rate=1e-5, max_steps=3, output_dir=str(tmp_path / "run"))
    from swiftlike.models.loader import build_miniature

    name = "model.layers.0.mlp.down_proj.weight"
    base = build_miniature("Qwen/Qwen3-0.6B").state_dict()[name].to(torch.bfloat16)  # (the run's base, seed 42)
    trained = load_file(str(tmp_path / "run" / "checkpoint-3" / "model.safetensors"))[name]
    assert trained.dtype == torch.bfloat16
    moved = (trained.float() != base.float()).float().mean()
    assert run.checkpoint and float(moved) > 0.04
