"""Packing bins sequences without crossing boundaries; validation loss is logged."""
import random

import pytest
import torch

import swiftlike as wb
from swiftlike.data.collate import collate_padded, collate_padding_free
from swiftlike.data.packing import best_fit_decreasing, pack
from swiftlike.models import build_miniature
from swiftlike.templates import IGNORE_INDEX
from swiftlike.train.loss import CausalLMLoss


def test_best_fit_decreasing_fills_bins_within_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = best_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    lower_bound = -(-sum(lengths) // 128)
    assert len(bins) <= lower_bound * 1.05  # near-optimal on random lengths
    assert best_fit_decreasing([5, 4, 3, 3, 1], 8) == [[0, 2], [1, 3, 4]]


def test_packed_rows_give_the_same_loss_as_separate_sequences():
    g = torch.Generator().manual_seed(1)
    rows = []
    for n in (9, 5, 7, 3):
        ids = torch.randint(0, 3000, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] + ids[1:], "length": n})
    packed = pack(rows, 16)
    assert all(sum(r["length"] for r in b) <= 16 for b in packed)
    loss = CausalLMLoss(build_miniature("Qwen/Qwen3-0.6B").eval())
    packed_sum, packed_n, _ = loss(**collate_padding_free(packed))
    padded_sum, padded_n, _ = loss(**collate_padded(rows, pad_id=0))
    assert int(packed_n) == int(padded_n)
    torch.testing.assert_close(packed_sum, padded_sum, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_packing_run_with_held_out_validation(tmp_path, capsys):
    result = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["examples/data/identity.jsonl"], lora=True,
                    packing=True, max_length=128, split_ratio=0.2, learning_rate=1e-2, max_steps=6, save_steps=3,
                    output_dir=str(tmp_path))
    out = capsys.readouterr().out
    assert "8 validation rows" in out and "packed into" in out
    evals = [h for h in result.log_history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [3, 6] and evals[1]["eval_loss"] < evals[0]["eval_loss"]
    assert result.metrics["eval_loss"] == evals[-1]["eval_loss"]
