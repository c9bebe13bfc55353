"""Merging a LoRA checkpoint into a standalone Hugging Face model: `wb export --merge` vs PEFT's
`merge_and_unload` + `save_pretrained` done by hand, on a Qwen3 of hidden 1024 x 8 layers (151k vocabulary,
~255M parameters, ~1 GB in fp32).

    python benchmarks/export_merge.py [--hidden 1024 --layers 8] [--max_shard_size 5GB] [--to gguf]

Each side runs in its own process (peak RSS is its own) and writes fp32 safetensors in shards of at most
--max_shard_size. Our side also writes the tokenizer with its chat template, generation stop tokens, args.json and
the model card; PEFT's side writes the model and the tokenizer. With `--to gguf` both write an f16 GGUF: ours
`wb export --merge --to gguf` (merged and written tensor by tensor), the other side PEFT's `merge_and_unload` in
memory and then the same GGUF writer (`write_gguf`; llama.cpp's converter is not installed here). Reported:
seconds, peak RSS, and peak RSS over the size of the written weights.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_model_dir, chat_rows, peak_rss_mb, run_child, scratch_dir, write_jsonl  # noqa: E402


def ours(ckpt: str, out: str, shard: str, to: str) -> float:
    from swiftlike.config import ExportConfig
    from swiftlike.pipelines.export import run_export

    t = time.perf_counter()
    run_export(ExportConfig(adapters=ckpt, merge=True, torch_dtype="float32", output_dir=out,
                            max_shard_size=shard, to=to, gguf_type="f16").validate())
    return time.perf_counter() - t


def peft(ckpt: str, out: str, shard: str, to: str) -> float:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = json.loads((Path(ckpt) / "args.json").read_text())["model"]
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, ckpt).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(base)
    if to == "gguf":
        from swiftlike.export.gguf import write_gguf
        from swiftlike.templates import get_template

        Path(out).mkdir(parents=True)
        write_gguf(model, tokenizer, get_template("qwen3", tokenizer), Path(out) / "m.gguf", "f16", "m")
    else:
        model.save_pretrained(out, max_shard_size=shard)
        tokenizer.save_pretrained(out)
    return time.perf_counter() - t


def _weights_mb(out: str) -> float:
    return sum(p.stat().st_size for p in Path(out).glob("*.safetensors")) / 2 ** 20 + \
        sum(p.stat().st_size for p in Path(out).glob("*.gguf")) / 2 ** 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--max_shard_size", default="5GB")
    ap.add_argument("--to", choices=("hf", "gguf"), default="hf")
    ap.add_argument("--child", choices=("ours", "peft"), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        out = str(scratch_dir("wb-export-out-")) + "/merged"
        seconds = (ours if a.child == "ours" else peft)(a.data, out, a.max_shard_size, a.to)
        print("RESULT " + json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "weights_mb": _weights_mb(out)}))
        return
    import swiftlike as wb

    work = scratch_dir("wb-export-")
    model_dir = str(build_model_dir(work / "model", hidden=a.hidden, layers=a.layers))
    data = str(write_jsonl(chat_rows(8), work / "chat.jsonl"))
    ckpt = wb.sft(model=model_dir, template="qwen3", dataset=[data], lora=True, max_steps=1, max_length=256,
                  torch_dtype="float32", output_dir=str(work / "run")).checkpoint
    res = {}
    for side in ("ours", "peft"):
        res[side] = run_child(__file__, ["--child", side, "--data", ckpt, "--max_shard_size", a.max_shard_size,
                                         "--to", a.to])
        r = res[side]
        print(f"{side:4s}: {r['seconds']:.1f}s, peak RSS {r['peak_rss_mb']:.0f} MB for {r['weights_mb']:.0f} MB of "
              f"weights ({r['peak_rss_mb'] / r['weights_mb']:.2f}x)", flush=True)
    print(f"ratio ours/PEFT: {res['peft']['seconds'] / res['ours']['seconds']:.2f}x speed, "
          f"{res['ours']['peak_rss_mb'] / res['peft']['peak_rss_mb']:.2f}x peak RSS")


if __name__ == "__main__":
    main()
