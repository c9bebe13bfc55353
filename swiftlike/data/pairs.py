"""Encode preference pairs: chosen and rejected share the prompt encoding; only completions are scored."""
from __future__ import annotations

import torch

from ..errors import UserError
from .collate import collate_padding_free
from .dataset import DataStats


def _with_prompt_untrained(messages: list[dict], prompt_len: int) -> list[dict]:
    return [dict(m, loss=False) if i < prompt_len else m for i, m in enumerate(messages)]


def encode_pairs(rows: list[dict], template, max_length: int, stats: DataStats | None = None
                 ) -> tuple[list[dict], DataStats]:
    """{"chosen": enc, "rejected": enc} per pair; pairs longer than max_length (either side) are dropped and
    counted, as are pairs whose completions have nothing to score."""
    stats = stats or DataStats()
    stats.rows_read = len(rows) + sum(n for why, n in stats.dropped.items() if why.startswith("bad row"))
    pairs = []
    for start in range(0, len(rows), 256):
        chunk = rows[start:start + 256]
        chosen_rows, rejected_rows = [], []
        for row in chunk:
            a, b = row["messages"], row["rejected_messages"]
            prompt_len = 0
            while prompt_len < min(len(a), len(b)) and a[prompt_len] == b[prompt_len]:
                prompt_len += 1
            chosen_rows.append({"messages": _with_prompt_untrained(a, prompt_len), "tools": row.get("tools")})
            rejected_rows.append({"messages": _with_prompt_untrained(b, prompt_len), "tools": row.get("tools")})
        for c, r in zip(template.encode_batch(chosen_rows), template.encode_batch(rejected_rows)):
            if max(c["length"], r["length"]) > max_length:
                stats.dropped[f"longer than max_length {max_length}"] += 1
            elif not any(x != -100 for x in c["labels"][1:]) or not any(x != -100 for x in r["labels"][1:]):
                stats.dropped["nothing to score"] += 1
            else:
                pairs.append({"chosen": c, "rejected": r, "length": c["length"] + r["length"]})
                stats.lengths.append(c["length"] + r["length"])
                stats.trained_tokens += sum(1 for x in c["labels"] + r["labels"] if x != -100)
    if not pairs:
        raise UserError(f"no pairs left to train on: {stats.report().splitlines()[0]}")
    return pairs, stats


def collate_pairs(pairs: list[dict]) -> dict:
    """One padding-free row: the chosen sequences, then the rejected ones."""
    batch = collate_padding_free([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs])
    batch["n_pairs"] = torch.tensor(len(pairs))
    return batch
