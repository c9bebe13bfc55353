"""Checkpoints in the Hugging Face / PEFT layout, written atomically.

A checkpoint is built in a hidden temporary directory and renamed into place when complete, so a
killed process never leaves a `checkpoint-N` that resume would pick up half-written.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from ..errors import UserError

_NAME = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.pt"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def save_checkpoint(output_dir: str | Path, step: int, model, tokenizer, args_json: str, state: dict,
                    training_state: dict, save_total_limit: int | None = None) -> Path:
    root = Path(output_dir)
    final = root / f"checkpoint-{step}"
    tmp = root / f".tmp-checkpoint-{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if "ref" in getattr(model, "peft_config", {}):  # a frozen reference copy of the starting adapter stays out
        model.save_pretrained(tmp, safe_serialization=True, selected_adapters=["default"])
    else:
        model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "args.json").write_text(args_json, encoding="utf-8")
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    torch.save(training_state, tmp / STATE_FILE)
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    if save_total_limit:
        for old in list_checkpoints(root)[:-save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def write_atomic(path: Path, text: str) -> None:
    """Write a text file so readers see the old or the new content, never a part."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def load_training_state(ckpt: Path) -> dict:
    path = Path(ckpt) / STATE_FILE
    if not path.is_file():
        raise UserError(f"{ckpt}: not a resumable checkpoint (no {STATE_FILE})")
    return torch.load(path, weights_only=True)


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
