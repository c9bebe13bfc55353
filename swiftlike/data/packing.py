"""Packing: bin encoded sequences into rows of at most `max_length` tokens (best-fit decreasing).

A packed row is a list of sequences; the padding-free collator lays them out back to back with per-sequence
position_ids and a block-diagonal mask, so attention and the loss never cross sequence boundaries.
"""
from __future__ import annotations

import bisect


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins whose lengths sum to at most `capacity`, longest sequences first,
    each into the fullest bin that still has room."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    free: list[tuple[int, int]] = []  # (remaining capacity, bin id), kept sorted
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, b = free.pop(k)
            bins[b].append(i)
            bisect.insort(free, (room - n, b))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - n, len(bins) - 1))
    return bins


def pack(rows: list[dict], max_length: int) -> list[list[dict]]:
    return [[rows[i] for i in b] for b in best_fit_decreasing([r["length"] for r in rows], max_length)]
