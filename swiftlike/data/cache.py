"""Encoded-data cache keyed by a fingerprint of everything that decides the encoding.

Fingerprint inputs: every source's bytes (hub datasets by name: the datasets library caches those), the
row selection and seed, the template (name, options, the model's own chat template for the fallback), the
tokenizer's full definition, max_length, truncation, loss scope, bad-row handling and the swiftlike version.
A second run with the same inputs loads the encoded rows instead of encoding again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from .. import __version__
from .dataset import DataStats, parse_selection
from .files import SUFFIXES


def cache_home(cache_dir: str | None = None) -> Path:
    """swiftlike's cache: --cache_dir, else $WB_CACHE_DIR, else ~/.cache/swiftlike."""
    return Path(cache_dir or os.environ.get("WB_CACHE_DIR") or Path.home() / ".cache" / "swiftlike")


def cache_root(cache_dir: str | None = None) -> Path:
    return cache_home(cache_dir) / "encoded"


def _source_digest(h, spec: str) -> None:
    path, count = parse_selection(spec)
    h.update(f"{path}#{count}".encode())
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES) if p.is_dir() else \
        [p] if p.is_file() else []
    for f in files:
        h.update(str(f).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)


# raised whenever the same inputs encode differently (2: split pieces share a border token, pretraining texts start
# with the tokenizer's begin-of-text token), so that no cache of the older encoding is reused
ENCODING_REVISION = 2


def fingerprint(specs: list[str], template, settings: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({**settings, "version": __version__, "encoding": ENCODING_REVISION}, sort_keys=True,
                        default=str).encode())
    options = {k: v for k, v in template.spec.options.items() if k != "tokenizer"}
    h.update(f"{template.name}|{template.loss_scope}|{sorted(options.items())}".encode())
    if "tokenizer" in template.spec.options:  # the fallback renders the model's own chat template
        h.update((template.tokenizer.chat_template or "").encode())
    backend = getattr(template.tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else repr(template.tokenizer.get_vocab()).encode())
    for spec in specs:
        _source_digest(h, spec)
    return h.hexdigest()[:32]


def load(root: Path, key: str) -> tuple[list[dict], DataStats] | None:
    folder = root / key
    if not (folder / "stats.json").is_file():
        return None
    from datasets import load_from_disk

    with _quiet():
        table = load_from_disk(str(folder / "rows"))
    rows = [{"input_ids": i, "labels": lab, "length": n}
            for i, lab, n in zip(table["input_ids"], table["labels"], table["length"])]
    meta = json.loads((folder / "stats.json").read_text())
    stats = DataStats(rows_read=meta["rows_read"], dropped=Counter(meta["dropped"]), lengths=meta["lengths"],
                      trained_tokens=meta["trained_tokens"], truncated=meta["truncated"],
                      truncation_word=meta.get("truncation_word", "truncated"), selected=meta.get("selected", []))
    return rows, stats


def save(root: Path, key: str, rows: list[dict], stats: DataStats) -> None:
    """Written to a temporary folder and renamed, so a killed run never leaves half a cache entry."""
    from datasets import Dataset

    tmp = root / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with _quiet():
        Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows], "labels": [r["labels"] for r in rows],
                           "length": [r["length"] for r in rows]}).save_to_disk(str(tmp / "rows"))
    (tmp / "stats.json").write_text(json.dumps({"rows_read": stats.rows_read, "dropped": dict(stats.dropped),
                                                "lengths": stats.lengths, "trained_tokens": stats.trained_tokens,
                                                "truncated": stats.truncated,
                                                "truncation_word": stats.truncation_word,
                                                "selected": stats.selected}))
    final = root / key
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


@contextmanager
def _quiet():
    """The datasets library's own progress bars ("Saving the dataset") say nothing about our encoding."""
    import datasets

    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()
