"""Dataset rows -> prompts for batch inference: any format the data layer reads, or prompts alone.

The prompt is the conversation before its final assistant turn (that turn is the reference answer), or the
whole conversation when it does not end with one; columns that are not part of the row's format are kept to
be written beside the prediction.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..data.dataset import parse_selection, renamed
from ..data.files import BadLine, read_rows, row_file
from ..data.formats import RowError, _tools, to_canonical  # _tools: the one tool-list normaliser
from ..errors import UserError

# fields a format consumes; any other column travels with the row to the output
FORMAT_FIELDS = {"messages", "conversations", "instruction", "input", "output", "query", "response", "history",
                 "system", "prompt", "completion", "question", "choices", "answer", "tools", "images", "videos"}


@dataclass
class PromptRow:
    key: str                      # where the row comes from (file:line), also its key in the output file
    messages: list[dict]          # the prompt
    tools: list | None = None
    reference: dict | None = None  # the final assistant turn of the data, when there is one
    extra: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)  # the row as read (after column renaming)
    images: list = field(default_factory=list)  # image sources, in the order of the <image> markers in messages
    base: Path | None = None      # the folder relative image paths are read from (the data file's)
    videos: list = field(default_factory=list)  # videos (files or frame lists), in the order of the <video> markers


def read_prompts(specs: list[str], columns: dict | None = None, seed: int = 42) -> list[PromptRow]:
    """The prompt of every row of every source ('#N' takes N rows, seeded); a row without one is an error
    naming its file and line."""
    from ..data.registry import lookup

    out = []
    for spec in specs:
        source, count = parse_selection(spec)
        meta = None if Path(source).exists() or "::" in source else lookup(source)  # a named dataset (wb datasets)
        mapping = {**(meta.columns if meta else {}), **(columns or {})}
        # (normalised: ./d.jsonl and d.jsonl give the same row keys, so a resumed run finds its rows)
        path = meta.path if meta else (source if "::" in source else os.path.normpath(source))
        rows = []
        for where, raw in read_rows(path):
            origin = row_file(where)  # relative media paths start at the row's own file (a folder holds several)
            where = where.replace(meta.path, source, 1) if meta else where  # "arithmetic:13", as in training
            if isinstance(raw, BadLine):
                raise UserError(f"{where}: {raw}")
            if mapping:
                try:
                    raw = renamed(raw, mapping)
                except RowError as e:
                    raise UserError(f"{where}: {e}") from None
            rows.append(prompt_row(where, raw, origin.parent if origin is not None else None))
        if not rows:
            raise UserError(f"{source}: no rows")
        if count is not None and count < len(rows):
            keep = sorted(random.Random(seed).sample(range(len(rows)), count))
            rows = [rows[i] for i in keep]
        out += rows
    return out


def prompt_row(where: str, raw: dict, base: Path | None = None) -> PromptRow:
    try:
        canonical = _canonical(raw)
    except RowError as e:
        raise UserError(f"{where}: no prompt ({e})") from None
    messages = canonical["messages"]
    reference = None
    if messages and messages[-1]["role"] == "assistant":
        messages, reference = messages[:-1], messages[-1]
    if not any(m["role"] in ("user", "tool") for m in messages):
        raise UserError(f"{where}: no prompt (no user turn before the answer)")
    extra = {k: v for k, v in raw.items() if k not in FORMAT_FIELDS}
    return PromptRow(where, messages, canonical.get("tools"), reference, extra, raw, canonical.get("images", []), base,
                     canonical.get("videos", []))


def _canonical(raw: dict) -> dict:
    """A conversation in any training format, else a prompt alone (GRPO's prompt formats)."""
    try:
        return to_canonical(raw, "sft")
    except RowError as first:
        try:
            row = to_canonical(raw, "prompt")
        except RowError:
            raise first from None
        return {"messages": row["messages"], "tools": _tools(raw.get("tools")),
                **{k: row[k] for k in ("images", "videos") if row.get(k)}}
