"""Rows on demand: `--streaming` reads sources as training goes, `--lazy_tokenize` encodes batch by batch.

RowStream is an endless, seeded stream over the sources (a shuffle buffer per pass, a new order each pass)
that can be replayed from any position, so resuming a run reads exactly the rows it would have read.
LazyCollate encodes the rows of a micro-batch when it is drawn, applying --max_length the same way as
eager encoding, and counts what it drops.
"""
from __future__ import annotations

import random
from collections import Counter
from typing import Callable, Iterator

from ..errors import UserError
from .dataset import TRUNCATION, _split, _truncate


class RowStream:
    def __init__(self, open_rows: Callable[[], Iterator[dict]], seed: int, buffer_size: int = 1000):
        self.open_rows, self.seed, self.buffer_size = open_rows, seed, buffer_size
        self._iter, self._pos = None, 0

    def _passes(self) -> Iterator[dict]:
        epoch = 0
        while True:
            rng = random.Random(self.seed + epoch)
            buffer, seen = [], 0
            for row in self.open_rows():
                seen += 1
                buffer.append(row)
                if len(buffer) >= self.buffer_size:
                    yield buffer.pop(rng.randrange(len(buffer)))
            rng.shuffle(buffer)
            yield from buffer
            if seen == 0:
                raise UserError("the streamed dataset has no rows")
            epoch += 1

    def take(self, start: int, n: int) -> list[dict]:
        """Rows start .. start+n-1 of the stream (replayed from the beginning when not contiguous)."""
        if self._iter is None or start != self._pos:
            self._iter, self._pos = self._passes(), 0
            for _ in range(start):
                next(self._iter)
            self._pos = start
        rows = [next(self._iter) for _ in range(n)]
        self._pos += n
        return rows


class LazyCollate:
    def __init__(self, template, max_length: int, truncation_strategy: str, collate, skip_bad_rows: bool):
        if truncation_strategy not in TRUNCATION:
            raise UserError(f"--truncation_strategy {truncation_strategy!r} is not one of {', '.join(TRUNCATION)}")
        self.template, self.max_length, self.strategy = template, max_length, truncation_strategy
        self.collate, self.skip = collate, skip_bad_rows
        self.dropped: Counter = Counter()

    def encode(self, rows: list[dict]) -> list[dict]:
        from .dataset import WHERE, encode_each, encode_with_media

        encoded, rejected = encode_each(rows, lambda some: encode_with_media(self.template, some),
                                        [row.get(WHERE, "a row") for row in rows], 0, self.skip)
        self.dropped.update(rejected)
        out = []
        for enc in filter(None, encoded):
            if enc["length"] > self.max_length:
                if self.strategy == "drop" or enc.get("images") or enc.get("videos"):
                    self.dropped[f"longer than max_length {self.max_length}"] += 1
                    continue
                out += _split(enc, self.max_length) if self.strategy == "split" else \
                    [_truncate(enc, self.max_length, self.strategy)]
            else:
                out.append(enc)
        return out

    def __call__(self, rows: list[dict]) -> dict:
        return self.collate(self.encode(rows) or [self._nothing()])

    def micro_batches(self, rows: list[dict], size: int) -> list[dict]:
        """The rows' micro-batches of at most `size` sequences each: one, unless --truncation_strategy split cut a
        long text into more pieces than that (its pieces then train in this step, `size` at a time, as eager
        encoding batches `size` pieces: memory stays bounded by --max_length)."""
        encoded = self.encode(rows) or [self._nothing()]
        return [self.collate(encoded[i:i + size]) for i in range(0, len(encoded), size)]

    def empty(self) -> dict:
        """A micro-batch that trains nothing (every process runs as many as the busiest one)."""
        return self.collate([self._nothing()])

    def _nothing(self) -> dict:  # every row dropped: an empty batch contributes no tokens
        return {"input_ids": [self.template.tokenizer.pad_token_id or 0], "labels": [-100], "length": 1}
