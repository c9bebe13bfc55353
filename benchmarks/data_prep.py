"""Dataset preparation end to end (load JSONL, detect format, encode with the chat template, pack):
swiftlike vs TRL's SFTTrainer preparation, on the 2,000-row chat set and a 50,000-row synthetic set.

    python benchmarks/data_prep.py [--sizes 2000 50000]

Each side runs in its own process (peak RSS is its own), cold: no dataset caches. TRL's side is the
SFTTrainer constructor with packing (its preparation: apply_chat_template tokenization, then packing) on a
model object that is already in memory, so the figure is its data preparation. Needs `pip install -e ".[bench]"`.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_child_args, build_model_dir, chat_rows, peak_rss_mb, run_child, scratch_dir,  # noqa: E402
                    write_jsonl)


def ours(model_dir: str, data: str, out: str) -> float:
    from swiftlike.config import SFTConfig
    from swiftlike.data.packing import pack
    from swiftlike.models import load_tokenizer
    from swiftlike.pipelines.sft import prepare_data
    from swiftlike.templates import get_template

    template = get_template("qwen3", load_tokenizer(model_dir))  # loaded before timing, as on TRL's side
    t = time.perf_counter()
    cfg = SFTConfig(model=model_dir, dataset=[data], template="qwen3", max_length=1024, dataset_cache=False).validate()
    rows, _, _ = prepare_data(cfg, template)
    pack(rows, cfg.max_length)
    return time.perf_counter() - t


def trl(model_dir: str, data: str, out: str) -> float:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    datasets.disable_caching()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    t = time.perf_counter()
    train = datasets.load_dataset("json", data_files=data)["train"]
    SFTTrainer(model=model, processing_class=tok, train_dataset=train,
               args=SFTConfig(output_dir=out, packing=True, max_length=1024, report_to="none", use_cpu=True,
                              dataset_num_proc=None))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 50000])
    add_child_args(ap)
    a = ap.parse_args()
    if a.child:
        with tempfile.TemporaryDirectory() as out:
            seconds = (ours if a.child == "ours" else trl)(a.model_dir, a.data, out)
        print("RESULT " + json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb()}))
        return
    work = scratch_dir("wb-dataprep-")
    model_dir = str(build_model_dir(work / "model"))
    for n in a.sizes:
        data = str(write_jsonl(chat_rows(n, seed=n), work / f"chat{n}.jsonl"))
        res = {}
        for side in ("ours", "trl"):
            res[side] = run_child(__file__, ["--child", side, "--model-dir", model_dir, "--data", data])
            print(f"[{n} rows] {side:4s}: {n / res[side]['seconds']:8.0f} rows/s ({res[side]['seconds']:.1f}s), "
                  f"peak RSS {res[side]['peak_rss_mb']:.0f} MB", flush=True)
        print(f"[{n} rows] ratio ours/TRL: {res['trl']['seconds'] / res['ours']['seconds']:.1f}x rows/s, "
              f"{res['ours']['peak_rss_mb'] / res['trl']['peak_rss_mb']:.2f}x peak RSS")


if __name__ == "__main__":
    main()
