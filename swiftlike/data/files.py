"""Read data sources row by row, keeping where every row came from ('file:line', 'file row N') for errors.

Sources: local .jsonl, .json (a list or {"data": [...]}), .csv, .parquet, folders of them, and hub datasets
as `hf::org/name[:subset][:split]` or `ms::org/name[:subset][:split]` (ModelScope).
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Iterator

from ..errors import UserError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
HUB_PREFIXES = ("hf::", "ms::")


def read_rows(source: str, streaming: bool = False) -> Iterator[tuple[str, "dict | BadLine"]]:
    """Yield (where, row) for every row of a source (hub datasets streamed when asked); an unreadable .jsonl
    line comes as a BadLine in place of its row."""
    if source.startswith(HUB_PREFIXES):
        yield from _hub(source, streaming)
        return
    p = Path(source)
    if not p.exists():
        raise UserError(f"dataset not found: {source}")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))  # .ipynb_checkpoints
        if not files:
            raise UserError(f"{source}: no {', '.join(SUFFIXES)} files in this folder")
        for f in files:
            yield from read_rows(str(f))
        return
    if p.suffix not in SUFFIXES:
        raise UserError(f"{source}: expected a {', '.join(SUFFIXES)} file or a folder of them")
    if p.suffix == ".parquet":
        yield from _parquet(source)
    elif p.suffix == ".jsonl":
        yield from _jsonl(source)
    elif p.suffix == ".csv":
        try:  # (a byte-order mark, as Excel's "CSV UTF-8" writes, is not data)
            with open(p, encoding="utf-8-sig") as f:  # read as rows are taken, not whole
                yield from _csv(source, f)
        except UnicodeDecodeError:
            _not_utf8(p)
    else:
        try:
            text = p.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            _not_utf8(p)
        yield from _json(source, text)


def _not_utf8(p: Path):
    data = p.read_bytes()
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"{p}:{line}: not UTF-8 text (byte {e.start})") from None


def row_file(where: str) -> Path | None:
    """The file a row was read from, from the origin read_rows gave it ('file:line', 'file row N'); None for a hub
    dataset's (no file-system call: it is asked for every row)."""
    return None if where.startswith(HUB_PREFIXES) else Path(re.sub(r"(:\d+| row \d+)$", "", where))


class BadLine(ValueError):
    """A line of a .jsonl file that is not a JSON object: yielded in place of the row, so that
    --skip_bad_rows can count it and the default can stop at it, naming the line."""


def _jsonl(path: str):
    """Line by line, as rows are taken (a file larger than memory streams); lines end at "\n" alone (U+2028 and
    a lone "\r" are text inside a string)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{lineno}: not UTF-8 text (byte {f.tell() - len(raw) + e.start})") from None
            if line.strip():
                yield _jsonl_row(path, lineno, line)


def _jsonl_row(path: str, lineno: int, line: str) -> tuple[str, "dict | BadLine"]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        row = BadLine(f"not valid JSON ({e.msg} at column {e.colno})")
    if not isinstance(row, (dict, BadLine)):
        row = BadLine(f"expected a JSON object, got {type(row).__name__}")
    return f"{path}:{lineno}", row


def _json(path: str, text: str):
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of rows or {{\"data\": [...]}}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise UserError(f"{path} row {i}: expected a JSON object, got {type(row).__name__}")
        yield f"{path} row {i}", row


def _csv(path: str, f):
    reader = csv.DictReader(f)  # quoted cells keep their line breaks (as "\n")
    if not reader.fieldnames:
        raise UserError(f"{path}: no header row")
    for row in reader:
        if None in row:  # more cells than header columns
            raise UserError(f"{path}:{reader.line_num}: {len(row[None])} more cells than the header has columns")
        missing = [k for k, v in row.items() if v is None]
        if missing:
            raise UserError(f"{path}:{reader.line_num}: missing columns {', '.join(missing)}")
        yield f"{path}:{reader.line_num}", {k: _maybe_json(k, v) for k, v in row.items()}


# columns that are text in every format the data layer reads: a cell there is never decoded as JSON
TEXT_COLUMNS = {"query", "response", "output", "instruction", "input", "answer", "text", "system", "question",
                "solution", "rejected_response"}


def _maybe_json(column: str, cell: str):
    """CSV cells holding JSON objects or lists of objects / strings (messages, history, images, choices) are
    decoded; everything else stays text (an answer such as `[1, 2]` is not a list)."""
    if column in TEXT_COLUMNS or cell[:1] not in "[{":
        return cell
    try:
        value = json.loads(cell)
    except json.JSONDecodeError:
        return cell
    if isinstance(value, list) and not (all(isinstance(v, dict) for v in value)
                                        or all(isinstance(v, str) for v in value)):
        return cell
    return value


def _parquet(path: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)  # a batch at a time, as rows are taken
        i = 0
        for batch in batches:
            for row in batch.to_pylist():
                yield f"{path} row {i}", row
                i += 1
    except Exception as e:
        raise UserError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from None


def _hub(source: str, streaming: bool = False):
    hub, _, rest = source.partition("::")
    name, subset, split = (rest.split(":") + [None, None])[:3]
    split = split or "train"
    try:
        if hub == "hf":
            from datasets import load_dataset

            data = load_dataset(name, subset, split=split, streaming=streaming)
        else:
            from modelscope import MsDataset

            data = MsDataset.load(name, subset_name=subset, split=split, use_streaming=streaming)
    except ImportError as e:
        raise UserError(f"{source}: needs {e.name} (pip install {'datasets' if hub == 'hf' else 'modelscope'})") \
            from None
    except Exception as e:  # network, missing repo, bad subset: one clear line
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load dataset {source}: {reason}") from None
    for i, row in enumerate(data):
        yield f"{source} row {i}", dict(row)


def inline_rows(value, name: str) -> list | None:
    """Rows given in Python (the API: a list of dicts, or a datasets.Dataset) as a .jsonl file under the cache,
    named by its content (so the encoded-data cache knows it again): [its path]; None for anything else (paths,
    names). Errors name the file's lines, which are the rows' positions (line N: row N - 1)."""
    import hashlib
    import os

    if hasattr(value, "features") and hasattr(value, "__iter__"):  # a datasets.Dataset or IterableDataset
        if not hasattr(value, "__len__"):  # (a stream: list() would never end)
            raise UserError(f"{name}: a streaming IterableDataset has no end; give a file or hub id with "
                            "streaming=True, or its first rows (.take(N))")
        value = list(value)
    if not isinstance(value, (list, tuple)) or not value or not any(isinstance(v, dict) for v in value):
        return None
    bad = next((i for i, v in enumerate(value) if not isinstance(v, dict)), None)
    if bad is not None:
        raise UserError(f"{name}: item {bad} is a {type(value[bad]).__name__}; give rows (dicts) or sources "
                        "(paths, names), not both")
    lines = []
    for i, row in enumerate(value):
        try:
            lines.append(json.dumps(row, ensure_ascii=False))
        except (TypeError, ValueError) as e:
            raise UserError(f"{name}: row {i} cannot be written as JSON ({e}); give images as paths or URLs") from None
    text = "\n".join(lines) + "\n"
    from .cache import cache_home  # (cache.py reads this module)

    folder = cache_home() / "inline"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.jsonl"
    if not path.is_file():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return [str(path)]
