"""The optimizer step of bf16 full fine-tuning, alone: what `wb` uses (train/optim.RoundingAdamW: AdamW with stochastic
rounding, one compiled call a bucket of small parameters or a large one) against torchao's AdamW with stochastic
rounding (what `wb` used before: a torch.compile wrapper built for every parameter at every step) and torch's AdamW
in plain bf16 (fused on CUDA, TRL's default there; foreach elsewhere), on the parameters of a real Qwen3 shape
(random bf16 values and gradients).

    python benchmarks/optimizer_step.py [--model_shape 0.6b|4b] [--steps 10] [--json out.json]

Reported per implementation: milliseconds per step (after 3 warm-up steps, which include torch.compile's for
torchao), and the same for as many parameters of 64 values each: the step's fixed cost (Python, guards, kernel
launches; for wb's, which steps small parameters together, one bucketed call) without the arithmetic. On
2026-11-26 full fine-tuning of Qwen3-0.6B's shape on an H100 ran at 0.75x TRL's tokens/s: this measures how much
of a step the optimizer takes. Needs torchao for its row (skipped without).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import qwen3_shape_config  # noqa: E402


def shapes(model_shape: str) -> list[torch.Size]:
    """The trainable parameters' shapes of that Qwen3 (tied embeddings counted once), from a meta-device model."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = {k: v for k, v in qwen3_shape_config(model_shape).items() if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        model = Qwen3ForCausalLM(Qwen3Config(**cfg))
    return [p.shape for p in model.parameters()]


def optimizers(device: str) -> dict:
    from swiftlike.train.optim import RoundingAdamW

    fused = dict(fused=True) if device == "cuda" else dict(foreach=True)
    makers = {"wb RoundingAdamW (stochastic rounding)": lambda ps: RoundingAdamW(ps, lr=1e-5, weight_decay=0.0),
              f"torch AdamW ({next(iter(fused))}, plain bf16)": lambda ps: torch.optim.AdamW(ps, lr=1e-5,
                                                                                            weight_decay=0.0, **fused)}
    try:  # last: on an H100 (2026-11-27) its compiling per parameter outlasted the script's 50 s cap
        from torchao.optim import _AdamW

        makers["torchao _AdamW (stochastic rounding)"] = lambda ps: _AdamW(ps, lr=1e-5, weight_decay=0.0,
                                                                          bf16_stochastic_round=True)
    except ImportError:
        print("torchao is not installed: its row is left out")
    return makers


def time_steps(make, params: list[torch.Tensor], steps: int, device: str) -> float:
    opt = make(params)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        opt.step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    del opt
    return seconds * 1000


def parameters(sizes: list[torch.Size], device: str, tiny: bool) -> list[torch.Tensor]:
    params = []
    for size in sizes:
        p = torch.nn.Parameter(torch.randn(64 if tiny else size, dtype=torch.bfloat16, device=device) * 0.02)
        p.grad = torch.randn_like(p) * 1e-3
        params.append(p)
    return params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_shape", default="0.6b", choices=["0.6b", "4b"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = shapes(args.model_shape)
    numel = sum(s.numel() for s in sizes)
    print(f"Qwen3-{args.model_shape} shape: {len(sizes)} parameters, {numel / 1e6:.0f}M values, bf16, on {device}")
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "parameters": len(sizes),
               "values": numel, "ms_per_step": {}, "ms_per_step_64_values_each": {}}
    for name, make in optimizers(device).items():
        whole = time_steps(make, parameters(sizes, device, tiny=False), args.steps, device)
        tiny = time_steps(make, parameters(sizes, device, tiny=True), args.steps, device)
        results["ms_per_step"][name], results["ms_per_step_64_values_each"][name] = whole, tiny
        print(f"{name:45s} {whole:9.1f} ms a step; {tiny:7.2f} ms with 64 values a parameter "
              f"({tiny * 1000 / len(sizes):.0f} us a parameter: the step's fixed cost over its parameters)",
              flush=True)
        if args.json:  # after every row: a cap that stops the script keeps the rows measured
            Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
