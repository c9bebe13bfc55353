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

from ..disk import settle
from ..errors import UserError

_NAME = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.pt"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: str | Path) -> int | None:
    """N of a `checkpoint-N` directory (None for another name)."""
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def prepare_checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    """The hidden directory a checkpoint is built in, the same on every rank (each may write its own shards
    there); rank 0 creates it afresh, every rank returns once it exists."""
    from .. import accel

    tmp = Path(output_dir) / f".tmp-checkpoint-{step}"
    if accel.is_main_process():
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    if accel.world_size() > 1:
        import torch.distributed as dist

        dist.barrier()
    return tmp


def processes_of(args: dict) -> int:
    """How many processes a run trained with, from its args.json (older ones lack `world_size`)."""
    return args.get("world_size") or args.get("nproc_per_node", 1) * args.get("nnodes", 1)


def save_checkpoint(tmp: Path, step: int, model, tokenizer, args_json: str, state: dict, training_state: dict,
                    save_total_limit: int | None = None, weights: dict | None = None, keep: str | None = None) -> Path:
    """Complete the checkpoint built in `tmp` (prepare_checkpoint_dir) and rename it to checkpoint-<step>.
    `weights`: the full state dict when the model's own parameters are sharded (DeepSpeed ZeRO-3, FSDP); `keep`:
    the name of a checkpoint --save_total_limit does not delete (the best one)."""
    root = tmp.parent
    final = root / f"checkpoint-{step}"
    kwargs = {"safe_serialization": True} if weights is None else {"safe_serialization": True, "state_dict": weights}
    if "ref" in getattr(model, "peft_config", {}):  # a frozen reference copy of the starting adapter stays out
        kwargs["selected_adapters"] = ["default"]
    if getattr(model, "peft_config", None):  # (a grown embedding is rebuilt from the base by every loader:
        kwargs["save_embedding_layers"] = False  # PEFT's "auto" saved it whole, 2 GB for Llama-3-8B)
    model.save_pretrained(tmp, **kwargs)
    initial = getattr(model, "swiftlike_lora_init", None)
    if initial is not None:  # PiSSA / OLoRA: plain LoRA on the original base (models/lora_init.py)
        from ..models.lora_init import write_as_plain_lora

        write_as_plain_lora(tmp, initial)
    tokenizer.save_pretrained(tmp)
    (tmp / "args.json").write_text(args_json, encoding="utf-8")
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    torch.save(training_state, tmp / STATE_FILE)
    settle(tmp)
    if final.exists():  # moved aside, not deleted in place: a kill leaves a whole checkpoint-N or none
        aside = root / f".old-checkpoint-{step}"
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
    os.replace(tmp, final)
    _fsync_entries(root)
    # what is aside, and what a killed run left half-written (one save runs at a time)
    for left in [*root.glob(".old-checkpoint-*"), *root.glob(".tmp-checkpoint-*")]:
        shutil.rmtree(left, ignore_errors=True)
    kept = []
    for ckpt in list_checkpoints(root):
        if checkpoint_step(ckpt) > step:  # of a run this one replaced (--overwrite_output_dir): never "latest"
            shutil.rmtree(ckpt, ignore_errors=True)
        else:
            kept.append(ckpt)
    if save_total_limit:  # the newest, this one among them, and the best
        for ckpt in kept[:-save_total_limit]:
            if ckpt.name != keep:
                shutil.rmtree(ckpt, ignore_errors=True)
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


def _fsync_entries(directory: Path) -> None:
    """The directory's entries (the rename) on disk; not every file below it (a run's earlier checkpoints)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # (a platform without directory handles)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
