"""Vision-language SFT throughput: `wb sft` vs TRL's SFTTrainer on the same miniature Qwen2.5-VL, images, data and LoRA.

    python benchmarks/vl_sft_throughput.py [--steps 20] [--batch 4] [--repeats 1]

Both sides train one saved, randomly initialised miniature of Qwen/Qwen2.5-VL-3B-Instruct (2-layer, hidden-64 language
model, one-block vision tower, the real 151k-token Qwen vocabulary) on the same generated PNG images and chat rows,
LoRA on the language model's linear layers, fp32, the same max_length, learning rate, steps and batch size. There
are exactly steps x batch rows and TRL reads them in the order swiftlike draws them, so both sides train on the same
micro-batches: the same tokens, the same first loss (LoRA starts as the identity), each row once.

Each run is a separate process (so peak RSS is its own); runs alternate ours/TRL. Reported per run: non-padding
tokens processed per second in the training loop (image tokens included: every position of a sequence as the
processor expands it, which each side counts itself and which are checked to agree), peak RSS, wall time, the first
loss; then the ratios. Needs `pip install -e ".[bench]"`; no torchvision (the TRL side builds the Qwen2.5-VL processor
without its video processor).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_child_args, chat_rows, peak_rss_mb, peer_lora, run_sides, scratch_dir,  # noqa: E402
                    write_jsonl)

MODEL_ID = "Qwen/Qwen2.5-VL-3B-Instruct"
TEMPLATE = Path(__file__).resolve().parents[1] / "swiftlike" / "assets" / "chat_templates" / "qwen2_vl.jinja"
IMAGE_SIZES = ((64, 64), (96, 64), (128, 128), (256, 192), (448, 336))  # 4, 6, 25, 63, 192 image tokens
MAX_LENGTH = 1024
LEARNING_RATE = 1e-4
SEED = 42
LLM_LINEAR = r".*\.language_model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj"  # what swiftlike's LoRA targets on VL


# ---- the shared model and data -------------------------------------------------------------------------------------

def build_vl_model_dir(path: Path) -> Path:
    """The miniature saved once (weights, tokenizer with the official Qwen2-VL chat template, image processor config),
    so that both sides load the very same model."""
    from swiftlike.models.loader import build_miniature, load_tokenizer
    from swiftlike.registry import find_model

    build_miniature(MODEL_ID, seed=SEED).save_pretrained(path)
    tokenizer = load_tokenizer(MODEL_ID, miniature=True)
    tokenizer.chat_template = TEMPLATE.read_text(encoding="utf-8")
    tokenizer.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(dict(find_model(MODEL_ID).processor), indent=2))
    return path


def write_image(path: Path, size: tuple[int, int], rng: random.Random) -> None:
    """A noise image of the given size (its pixels do not change the compute, only its size does)."""
    from PIL import Image

    Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3)).save(path)


def vl_rows(folder: Path, n: int, seed: int = SEED) -> list[dict]:
    """n chat rows, each with one image (every fifth with two) of a random size, in swiftlike's image-part form with
    paths relative to `folder`; the images are written there."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, row in enumerate(chat_rows(n, seed=seed, mean_tokens=40, max_tokens=160)):
        names = [f"images/{i}_{k}.png" for k in range(2 if i % 5 == 4 else 1)]
        for name in names:
            write_image(folder / name, rng.choice(IMAGE_SIZES), rng)
        question, answer = (m["content"] for m in row["messages"])
        parts = [{"type": "image", "image": name} for name in names] + [{"type": "text", "text": question}]
        rows.append({"messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": answer}]})
    return rows


def trl_rows(rows: list[dict], folder: Path) -> list[dict]:
    """The same rows in TRL's vision form: string contents and an `images` column (TRL puts the images at the start of
    the first user message, where the image parts stand in our rows)."""
    out = []
    for row in rows:
        user, assistant = row["messages"]
        images = [str(folder / p["image"]) for p in user["content"] if p["type"] == "image"]
        text = next(p["text"] for p in user["content"] if p["type"] == "text")
        out.append({"messages": [{"role": "user", "content": text}, assistant], "images": images})
    return out


def swiftlike_order(n_rows: int, steps: int, batch: int) -> list[int]:
    """The row indices swiftlike's trainer draws, micro-batch after micro-batch (one process, no accumulation)."""
    from swiftlike.train.trainer import epoch_chunk

    return [i for step in range(steps) for i in epoch_chunk(step, n_rows, batch, SEED)]


# ---- the two sides -------------------------------------------------------------------------------------------------

def run_ours(model_dir: str, data: str, steps: int, batch: int, out: str) -> dict:
    import swiftlike as wb

    t = time.perf_counter()
    result = wb.sft(model=model_dir, template="qwen2_vl", dataset=[data], lora=True, max_steps=steps,
                    per_device_train_batch_size=batch, learning_rate=LEARNING_RATE, max_length=MAX_LENGTH,
                    torch_dtype="float32", seed=SEED, logging_steps=steps, save_steps=10 ** 9, output_dir=out)
    m = result.metrics
    return {"tokens": m["input_tokens"], "trained_tokens": m["trained_tokens"],
            "positions": round(m["input_tokens"] / m["padding_efficiency"]), "train_seconds": m["train_seconds"],
            "first_loss": m["first_loss"], "wall_seconds": time.perf_counter() - t}


def trl_chat_template() -> str:
    """TRL's own training variant of the Qwen2.5-VL template ({% generation %} around each assistant turn) with the
    newline after `<|im_end|>` moved out of the generation block, so that the trained tokens are swiftlike's
    (`answer<|im_end|>`); the rendered text is unchanged."""
    import trl

    text = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5_vl_training.jinja").read_text(encoding="utf-8")
    head, rest = text.split("{%- generation -%}")
    body, tail = rest.split("{%- endgeneration -%}")
    end = "{{- '<|im_end|>\\n' }}"
    if body.count(end) != 2:
        raise SystemExit("TRL's qwen2_5_vl_training.jinja changed: cannot move the newline out of its generation block")
    body = body.replace(end, "{{- '<|im_end|>' }}")
    return head + "{%- generation -%}" + body + "{%- endgeneration -%}{{- '\\n' }}" + tail


def vl_processor(model_dir: str):
    """The Qwen2.5-VL processor without a video processor: AutoProcessor and the class's own constructor look up the
    video processor class, which needs torchvision."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    cfg = json.loads((Path(model_dir) / "preprocessor_config.json").read_text())
    cfg = {k: v for k, v in cfg.items() if k not in ("processor_class", "image_processor_type")}
    return ImageOnlyProcessor(image_processor=Qwen2VLImageProcessorPil(**cfg),
                              tokenizer=AutoTokenizer.from_pretrained(model_dir), chat_template=trl_chat_template())


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def trl_dataset(data: str):
    from datasets import Image, List, load_dataset

    return load_dataset("json", data_files=data)["train"].cast_column("images", List(Image()))


class CountingCollator:
    """A data collator that counts what its batches hold: positions (padding included) and trained labels."""

    def __init__(self, collate):
        self.collate, self.positions, self.trained = collate, 0, 0

    def __call__(self, examples):
        batch = self.collate(examples)
        self.positions += batch["input_ids"].numel()
        self.trained += int((batch["labels"] != -100).sum())
        return batch


def run_trl(model_dir: str, data: str, steps: int, batch: int, out: str) -> dict:
    from trl import SFTConfig, SFTTrainer

    t = time.perf_counter()
    args = SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=LEARNING_RATE,
                     max_length=MAX_LENGTH, assistant_only_loss=True, train_sampling_strategy="sequential",
                     logging_steps=1, save_strategy="no", report_to="none", use_cpu=not _cuda(), bf16=False,
                     fp16=False, dataloader_num_workers=0, seed=SEED, model_init_kwargs={"dtype": "float32"},
                     gradient_checkpointing=False)  # TRL's default is on; swiftlike's is off: the same on both
    lora = peer_lora()
    lora.target_modules = LLM_LINEAR
    trainer = SFTTrainer(model=model_dir, args=args, train_dataset=trl_dataset(data),
                         processing_class=vl_processor(model_dir), peft_config=lora)
    trainer.data_collator = counter = CountingCollator(trainer.data_collator)
    t_train = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t_train
    history = trainer.state.log_history
    return {"tokens": int(max(h.get("num_tokens", 0) for h in history)), "trained_tokens": counter.trained,
            "positions": counter.positions, "train_seconds": train_seconds,
            "first_loss": next(h["loss"] for h in history if "loss" in h), "wall_seconds": time.perf_counter() - t}


def child(which: str, model_dir: str, data: str, steps: int, batch: int) -> None:
    with tempfile.TemporaryDirectory() as out:
        res = (run_ours if which == "ours" else run_trl)(model_dir, data, steps, batch, out)
    res["tokens_per_second"] = res["tokens"] / res["train_seconds"]
    res["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(res))


# ---- the benchmark -------------------------------------------------------------------------------------------------

def prepare(work: Path, steps: int, batch: int) -> dict[str, str]:
    """The model directory and each side's data file (steps x batch rows; TRL's in swiftlike's draw order)."""
    model_dir = build_vl_model_dir(work / "model")
    rows = vl_rows(work / "data", steps * batch)
    ours = write_jsonl(rows, work / "data" / "vl.jsonl")
    ordered = [rows[i] for i in swiftlike_order(len(rows), steps, batch)]
    theirs = write_jsonl(trl_rows(ordered, work / "data"), work / "data" / "vl_trl.jsonl")
    return {"model": str(model_dir), "ours": str(ours), "trl": str(theirs)}


def report(results: dict[str, list], sides: list[str]) -> None:
    best = {s: max(results[s], key=lambda x: x["tokens_per_second"]) for s in sides}
    print()
    for s in sides:
        b = best[s]
        print(f"{s:5s} best: {b['tokens_per_second']:.1f} tok/s, peak RSS {b['peak_rss_mb']:.0f} MB, "
              f"wall {b['wall_seconds']:.1f}s, first loss {b['first_loss']:.4f}; tokens {b['tokens']} "
              f"(trained {b['trained_tokens']}) in {b['positions']} positions")
    if len(sides) < 2:
        return
    ours, trl = best["ours"], best["trl"]
    for key in ("tokens", "trained_tokens"):
        if ours[key] != trl[key]:
            print(f"WARNING: the sides counted different {key} ({ours[key]} vs {trl[key]})")
    print(f"ratio ours/TRL: throughput {ours['tokens_per_second'] / trl['tokens_per_second']:.2f}x, "
          f"peak RSS {ours['peak_rss_mb'] / trl['peak_rss_mb']:.2f}x, "
          f"wall {ours['wall_seconds'] / trl['wall_seconds']:.2f}x; "
          f"first loss relative difference {abs(ours['first_loss'] - trl['first_loss']) / trl['first_loss']:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--only", choices=("ours", "trl"), help="run one side only")
    add_child_args(ap)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.model_dir, a.data, a.steps, a.batch)

    paths = prepare(scratch_dir("wb-bench-vl-"), a.steps, a.batch)
    sides = [a.only] if a.only else ["ours", "trl"]
    results = run_sides(__file__, sides, a.repeats,
                        lambda side: ["--model-dir", paths["model"], "--data", paths[side], "--steps", str(a.steps),
                                      "--batch", str(a.batch)],
                        lambda res: f", first loss {res['first_loss']:.4f}")
    report(results, sides)


if __name__ == "__main__":
    main()
