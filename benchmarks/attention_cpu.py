"""Padding-free attention on CPU: the block-diagonal mask (sdpa over the whole row, what transformers does for packed
rows and what swiftlike did before) vs `wb_varlen` (one causal sdpa call per sequence, borders from position_ids).

    python benchmarks/attention_cpu.py [--shapes 256,2048,120 512,4096,120 ...]

Each shape is hidden size, row length L (tokens in one padding-free row) and the mean sequence length (lognormal
lengths, sigma 0.8) of a Qwen3-shaped model with 4 layers, head_dim 64 (hidden/64 heads, hidden/128 KV heads).
Reported: the seconds of one forward + backward through the trainer's loss (CausalLMLoss: the block mask is built
there, as in training), the best of three, alternating the two paths; the speed-up; and the bytes the forward keeps
for backward (every tensor autograd saves, counted once per storage). Both paths compute the same loss and
gradients (tests/test_attention.py).
"""
from __future__ import annotations

import argparse
import random
import time

DEFAULT = ["64,256,40", "256,512,60", "256,1024,60", "256,2048,120", "512,2048,60", "512,4096,120",
           "1024,4096,120", "512,8192,250"]


def _model(impl: str, hidden: int):
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(vocab_size=4096, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=4,
                         num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 128), head_dim=64)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.config._attn_implementation = impl
    return model


def _row(total: int, mean: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows, n = [], 0
    while n < total:
        length = max(8, min(total - n, int(rng.lognormvariate(0, 0.8) * mean)))
        ids = [rng.randrange(5, 4096) for _ in range(length)]
        rows.append({"input_ids": ids, "labels": ids, "length": length})
        n += length
    return rows


def _saved_bytes(model, batch) -> int:
    """Bytes of the tensors one forward keeps for backward (each storage once)."""
    import torch

    from swiftlike.train.loss import CausalLMLoss

    seen: dict[int, int] = {}

    def pack(t):
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _, _ = CausalLMLoss(model)(**batch)
    del loss
    return sum(seen.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=DEFAULT, help="hidden,row_tokens,mean_sequence_tokens")
    args = ap.parse_args()

    from swiftlike.data.collate import collate_padding_free
    from swiftlike.models import attention
    from swiftlike.train.loss import CausalLMLoss

    attention.register()
    print("| hidden | row tokens | sequences | block mask (s) | wb_varlen (s) | speed-up | kept for backward (MiB): "
          "block mask / wb_varlen |\n|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        hidden, length, mean = (int(x) for x in shape.split(","))
        batch = collate_padding_free(_row(length, mean))
        sequences = int((batch["position_ids"][0] == 0).sum())
        models = {impl: _model(impl, hidden) for impl in ("sdpa", attention.VARLEN)}
        seconds: dict[str, list[float]] = {}
        for impl in ("sdpa", attention.VARLEN) * 3:
            model = models[impl]
            t = time.perf_counter()
            model.zero_grad()
            loss, _, _ = CausalLMLoss(model)(**batch)
            loss.backward()
            seconds.setdefault(impl, []).append(time.perf_counter() - t)
        mask, varlen = min(seconds["sdpa"]), min(seconds[attention.VARLEN])
        kept = [_saved_bytes(models[impl], batch) / 2 ** 20 for impl in ("sdpa", attention.VARLEN)]
        print(f"| {hidden} | {length:,} | {sequences} | {mask:.3f} | {varlen:.3f} | {mask / varlen:.2f}x | "
              f"{kept[0]:,.0f} / {kept[1]:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
