"""Load, normalize and encode training data; report what was kept and what was dropped."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..errors import UserError
from .files import read_rows
from ..templates.errors import TemplateError
from .formats import RowError, to_canonical

ENCODE_CHUNK = 512


@dataclass
class DataStats:
    rows_read: int = 0
    dropped: Counter = field(default_factory=Counter)
    lengths: list = field(default_factory=list)
    trained_tokens: int = 0

    def report(self) -> str:
        kept = len(self.lengths)
        lines = [f"rows read {self.rows_read}, kept {kept}"
                 + "".join(f", dropped {n} ({why})" for why, n in self.dropped.items())]
        if kept:
            s = sorted(self.lengths)
            pct = {p: s[min(kept - 1, int(p / 100 * kept))] for p in (50, 90, 99)}
            lines.append(f"tokens {sum(s)} (trained {self.trained_tokens}); length p50 {pct[50]} p90 {pct[90]} "
                         f"p99 {pct[99]} max {s[-1]}")
        return "\n".join(lines)


def load_rows(paths: list[str], sources: list | None = None) -> list[dict]:
    """Canonical rows of every file; `sources`, when given, receives each row's 'file:line'."""
    rows = []
    for path in paths:
        for where, raw in read_rows(path):
            try:
                rows.append(to_canonical(raw))
            except RowError as e:
                raise UserError(f"{where}: {e}") from None
            if sources is not None:
                sources.append(where)
    return rows


def _encode_chunk(template, rows: list[dict], sources: list | None, offset: int) -> list[dict]:
    try:
        return template.encode_batch(rows)
    except TemplateError:
        for i, row in enumerate(rows):  # find the row the template rejects, to name it
            try:
                template.encode(row)
            except TemplateError as e:
                where = sources[offset + i] if sources else f"row {offset + i}"
                raise UserError(f"{where}: {e}") from None
        raise


def encode_rows(rows: list[dict], template, max_length: int, sources: list | None = None
                ) -> tuple[list[dict], DataStats]:
    """Encode canonical rows; drop (and count) rows over max_length or with nothing to train."""
    stats = DataStats(rows_read=len(rows))
    encoded = []
    for start in range(0, len(rows), ENCODE_CHUNK):
        for enc in _encode_chunk(template, rows[start:start + ENCODE_CHUNK], sources, start):
            trained = sum(1 for x in enc["labels"][1:] if x != -100)
            if enc["length"] > max_length:
                stats.dropped[f"longer than max_length {max_length}"] += 1
            elif trained == 0:
                stats.dropped["no trained tokens"] += 1
            else:
                encoded.append(enc)
                stats.lengths.append(enc["length"])
                stats.trained_tokens += trained
    if not encoded:
        raise UserError(f"no rows left to train on: {stats.report().splitlines()[0]}")
    return encoded, stats
