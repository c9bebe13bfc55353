"""Perplexity of a causal language model on encoded rows: exp of the mean negative log-likelihood of the
labelled tokens (what training learns: the assistant turns of chat rows, every token of plain text)."""
from __future__ import annotations

import math

import torch


@torch.no_grad()
def perplexity(model, encoded: list[dict]) -> float:
    """One row at a time (no padding to get wrong); the model's own forward computes the logits."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    for enc in encoded:
        ids = torch.tensor([enc["input_ids"]], device=device)
        labels = torch.tensor(enc["labels"][1:], device=device)
        keep = labels != -100
        if not keep.any():
            continue
        logits = model(input_ids=ids).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum")
        total, count = total + nll.item(), count + int(keep.sum())
    if not count:
        raise ValueError("no labelled tokens to measure perplexity on")
    return math.exp(total / count)
