"""Read local data files row by row, keeping the file and line of every row for error messages."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ..errors import UserError

SUFFIXES = (".jsonl", ".json")


def read_rows(path: str) -> Iterator[tuple[str, dict]]:
    """Yield (where, row) with `where` like 'data.jsonl:12' or 'data.json row 3'."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"dataset not found: {path}")
    if p.is_dir() or p.suffix not in SUFFIXES:
        raise UserError(f"{path}: expected a .jsonl or .json file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if p.suffix == ".jsonl":
        yield from _jsonl(path, text)
    else:
        yield from _json(path, text)


def _jsonl(path: str, text: str):
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        yield f"{path}:{lineno}", row


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
