"""`wb data preview`: show exactly what a model will be trained on."""
from __future__ import annotations

import json
import sys

from ..config import PreviewConfig
from ..data.dataset import load_rows
from ..models import load_tokenizer
from ..templates import IGNORE_INDEX, get_template
from .sft import resolve_template_name

_GREEN, _RESET = "\033[32m", "\033[0m"


def _runs(ids: list[int], labels: list[int]) -> list[tuple[list[int], bool]]:
    runs: list[tuple[list[int], bool]] = []
    for tok, lab in zip(ids, labels):
        trained = lab != IGNORE_INDEX
        if runs and runs[-1][1] == trained:
            runs[-1][0].append(tok)
        else:
            runs.append(([tok], trained))
    return runs


def highlight(tokenizer, enc: dict, color: bool) -> str:
    """The encoded text with trained spans in green (terminal) or between ⟦ ⟧ (elsewhere)."""
    out = []
    for ids, trained in _runs(enc["input_ids"], enc["labels"]):
        text = tokenizer.decode(ids)
        out.append((f"{_GREEN}{text}{_RESET}" if color else f"⟦{text}⟧") if trained else text)
    return "".join(out)


def run_preview(cfg: PreviewConfig, stream=None) -> None:
    stream = stream or sys.stdout
    tokenizer = load_tokenizer(cfg.model, cfg.hub, cfg.trust_remote_code)
    name = resolve_template_name(cfg, tokenizer)
    template = get_template(name, tokenizer, cfg.loss_scope)
    sources: list[str] = []
    rows = load_rows(cfg.dataset, sources, columns=cfg.columns, names=cfg.data_names())[: cfg.n]
    color = stream.isatty()
    for where, row in zip(sources, rows):
        enc = template.encode(row)
        trained = sum(1 for x in enc["labels"] if x != IGNORE_INDEX)
        if cfg.json:
            stream.write(json.dumps({"source": where, "input_ids": enc["input_ids"], "labels": enc["labels"]}) + "\n")
            continue
        legend = "green" if color else "⟦ ⟧"
        stream.write(f"── {where} · template {template.name} · {enc['length']} tokens, {trained} trained ({legend})\n")
        stream.write(highlight(tokenizer, enc, color) + "\n\n")
