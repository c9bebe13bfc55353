"""Evaluation throughput: `wb eval` on GSM8K prompts vs lm-evaluation-harness's local `hf` model, on the same
random Qwen3, the same chat-templated prompts and the same settings (fp32, greedy, same max_new_tokens and batch).

    pip install lm_eval==0.4.13
    python benchmarks/eval_throughput.py [--rows 256] [--max-new-tokens 64] [--batch 32] [--repeats 2]

The model: a random Qwen3, hidden 256 x 4 layers, with the real 151,936-token tokenizer (benchmarks/common.py).
The data: the first --rows problems of the GSM8K test slice this package ships (swiftlike/assets/datasets/
gsm8k_test.jsonl), zero-shot, each prompt the Qwen3 chat template applied to one user turn (the question) with
the generation prompt; answers stop at <|im_end|> or --max-new-tokens. Our side: `run_eval` (`wb eval --model DIR
--template qwen3 --eval_dataset gsm8k-test --limit N ...`, metric math), the engine's continuous batching with
`--eval_batch_size`. lm-eval's side: `lm_eval.simple_evaluate(model="hf", apply_chat_template=True, ...)` on a
task defined by a YAML file written here (the hub is not used: the same JSONL through `datasets`' json loader),
kept close to lm-eval's own gsm8k task (exact_match after its regex filters), static left-padded batches of
--batch. Each side runs in its own process (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set, a fresh datasets cache).
Timed: the whole call (model load, data reading, generation, scoring, writing results) and, inside it, the
generation alone (`swiftlike.eval.run.evaluate`; lm-eval's `HFLM.generate_until`). The script checks that both
sides fed the model the same prompt tokens (every row) and counts the rows whose generated tokens agree.
Each side runs --repeats times, alternating (ours, lm-eval, lm-eval, ours, ...), and the best run of each is
reported, with every run's rows/s and the share of its time some task waited for a CPU (Linux PSI), because on
a shared machine one run can be several times slower than the next.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_model_dir, peak_rss_mb, run_child, scratch_dir  # noqa: E402

END = 151645  # <|im_end|>
DATA = Path(__file__).resolve().parents[1] / "swiftlike" / "assets" / "datasets" / "gsm8k_test.jsonl"
TASK = "gsm8k_wb_bench"

# lm-eval's tasks/gsm8k/gsm8k.yaml, zero-shot, the question alone as the user turn, the local JSONL as the data
TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: generate_until
test_split: test
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
num_fewshot: 0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore:
      - ","
      - "\\\\$"
      - "(?s).*#### "
      - "\\\\.$"
generation_kwargs:
  until:
    - "<|im_end|>"
  do_sample: false
  temperature: 0.0
  max_gen_toks: {max_new}
repeats: 1
filter_list:
  - name: "strict-match"
    filter:
      - function: "regex"
        regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"
      - function: "take_first"
  - name: "flexible-extract"
    filter:
      - function: "regex"
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"
      - function: "take_first"
metadata:
  version: 3.0
"""


def _cut(ids: list[int]) -> list[int]:
    return ids[:ids.index(END)] if END in ids else ids


def _digest(ids: list[int]) -> str:
    return hashlib.md5(json.dumps(ids).encode()).hexdigest()


def ours(model_dir: str, rows: int, max_new: int, batch: int) -> dict:
    """`run_eval` as `wb eval` calls it; the engine's submit is wrapped to record prompt and answer tokens."""
    import swiftlike.eval.run as run
    from swiftlike.config import EvalConfig
    from swiftlike.infer.engine import TransformersEngine
    from swiftlike.pipelines.eval import run_eval

    submitted, timer = [], {}
    submit, evaluate = TransformersEngine.submit, run.evaluate

    def recording_submit(self, prompt_ids, params, adapter=None):
        request = submit(self, prompt_ids, params, adapter)
        submitted.append(request)
        return request

    def timed_evaluate(*a, **k):
        start = time.perf_counter()
        result = evaluate(*a, **k)
        timer["generate"] = time.perf_counter() - start
        return result

    TransformersEngine.submit, run.evaluate = recording_submit, timed_evaluate
    cfg = EvalConfig(model=model_dir, template="qwen3", eval_dataset=["gsm8k-test"], limit=rows,
                     max_new_tokens=max_new, eval_batch_size=batch, torch_dtype="float32",
                     output_dir=str(scratch_dir("wb-eval-bench-out-"))).validate()
    start = time.perf_counter()
    results = run_eval(cfg)
    seconds = time.perf_counter() - start
    answers = [(r.prompt_ids, list(r.result()[0].token_ids)) for r in submitted]
    task = results["models"][0]["tasks"][0]
    from transformers import AutoTokenizer

    first = AutoTokenizer.from_pretrained(model_dir).decode(answers[0][0])
    return {"seconds": seconds, "generate_seconds": timer["generate"], "rows": task["n"],
            "tokens": sum(len(a) for _, a in answers), "decoded": sum(len(a) for _, a in answers),
            "stopped": sum(len(a) < max_new for _, a in answers),
            "scores": {"math": task["score"]},
            "answers": {_digest(p): _digest(a) for p, a in answers},
            "prompts": sorted(_digest(p) for p, _ in answers), "first_prompt": first, "peak_rss_mb": peak_rss_mb()}


def lm_eval_side(model_dir: str, rows: int, max_new: int, batch: int) -> dict:
    """`lm_eval.simple_evaluate` with the `hf` model; `_model_generate` is wrapped to record what the model was
    given (the unpadded prompt tokens) and what it generated, and `generate_until` to time generation."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    task_dir = scratch_dir("wb-eval-bench-task-")
    (task_dir / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, data=json.dumps(str(DATA)), max_new=max_new))
    answers, timer = [], {"generate": 0.0, "decoded": 0}
    generate_until, model_generate = HFLM.generate_until, HFLM._model_generate

    def recording_generate(self, context, max_length, stop, **kwargs):
        out = model_generate(self, context, max_length, stop, **kwargs)
        mask, width = kwargs["attention_mask"], context.shape[1]
        for i in range(context.shape[0]):
            answers.append((context[i][mask[i].bool()].tolist(), _cut(out[i, width:].tolist())))
        timer["decoded"] += context.shape[0] * (out.shape[1] - width)  # finished rows run on with their batch
        return out

    def timed_generate_until(self, *a, **k):
        start = time.perf_counter()
        result = generate_until(self, *a, **k)
        timer["generate"] += time.perf_counter() - start
        return result

    HFLM._model_generate, HFLM.generate_until = recording_generate, timed_generate_until
    start = time.perf_counter()
    results = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=[TASK],
                                      limit=rows, batch_size=batch, apply_chat_template=True, device="cpu",
                                      task_manager=TaskManager(include_path=str(task_dir)))
    seconds = time.perf_counter() - start
    scores = {k.split(",")[1]: v for k, v in results["results"][TASK].items()
              if k.startswith("exact_match,")}
    samples = results["samples"][TASK]
    first = next(s for s in samples if s["doc_id"] == 0)["arguments"]
    first = first[0][0] if isinstance(first, list) else first["gen_args_0"]["arg_0"]
    return {"seconds": seconds, "generate_seconds": timer["generate"], "rows": len({s["doc_id"] for s in samples}),
            "tokens": sum(len(a) for _, a in answers), "decoded": timer["decoded"],
            "stopped": sum(len(a) < max_new for _, a in answers), "scores": scores,
            "answers": {_digest(p): _digest(a) for p, a in answers},
            "prompts": sorted(_digest(p) for p, _ in answers), "first_prompt": first, "peak_rss_mb": peak_rss_mb()}


def cpu_stall_us() -> int | None:
    """Microseconds some runnable task waited for a CPU since boot (Linux pressure stall information)."""
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return None
    return int(some.rsplit("total=", 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32, help="eval batch size of both sides")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating (ABBA...); best reported")
    ap.add_argument("--child", choices=("ours", "lm_eval"), help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        res = (ours if a.child == "ours" else lm_eval_side)(a.model_dir, a.rows, a.max_new_tokens, a.batch)
        print("RESULT " + json.dumps(res))
        return

    import torch

    work = scratch_dir("wb-eval-bench-")
    model_dir = str(build_model_dir(work / "model"))
    print(f"{a.rows} GSM8K rows, zero-shot, greedy, up to {a.max_new_tokens} new tokens, batch {a.batch}, fp32; "
          f"torch threads {torch.get_num_threads()}; {a.repeats} run(s) of each side", flush=True)
    runs = {"ours": [], "lm_eval": []}
    for i in range(a.repeats):
        for side in ("ours", "lm_eval") if i % 2 == 0 else ("lm_eval", "ours"):
            os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                              HF_DATASETS_CACHE=str(work / f"datasets-cache-{side}-{i}"))  # cold, offline
            stall, start = cpu_stall_us(), time.perf_counter()
            r = run_child(__file__, ["--child", side, "--model-dir", model_dir, "--rows", str(a.rows),
                                     "--max-new-tokens", str(a.max_new_tokens), "--batch", str(a.batch)])
            wall = time.perf_counter() - start
            r["stall"] = None if stall is None else (cpu_stall_us() - stall) / 1e6 / wall
            runs[side].append(r)
            print(f"{side}: {r['rows']} rows in {r['seconds']:.1f}s (generation {r['generate_seconds']:.1f}s), "
                  f"{r['tokens']} generated tokens ({r['stopped']} answers ended before the limit), scores "
                  f"{r['scores']}, peak RSS {r['peak_rss_mb']:.0f} MB"
                  + ("" if r["stall"] is None else f", CPU contention {100 * r['stall']:.0f}% of the time"),
                  flush=True)

    ours_r, peer = runs["ours"][0], runs["lm_eval"][0]
    print(f"\nfirst prompt, ours:    {ours_r['first_prompt']!r}\nfirst prompt, lm-eval: {peer['first_prompt']!r}")
    if ours_r["first_prompt"] != peer["first_prompt"] or Counter(ours_r["prompts"]) != Counter(peer["prompts"]):
        sys.exit("the two sides did not give the model the same prompt tokens: not comparable")
    same = sum(ours_r["answers"][p] == a for p, a in peer["answers"].items())
    repeatable = all(r["answers"] == runs[side][0]["answers"] for side in runs for r in runs[side])
    print(f"same prompt tokens on every row ({len(peer['prompts'])}); same generated tokens on {same}/"
          f"{len(peer['answers'])} rows; every run of a side gave the same tokens: {repeatable}; lm-eval decoded "
          f"{peer['decoded']} positions for its {peer['tokens']} answer tokens (rows that end keep running with "
          f"their batch)")

    def rate(r):
        return r["rows"] / r["seconds"]

    for side in runs:
        print(f"{side} rows/s per run: " + ", ".join(f"{rate(r):.2f}" for r in runs[side]))
    best = {side: max(runs[side], key=rate) for side in runs}
    ours_r, peer = best["ours"], best["lm_eval"]
    print(f"\nbest of {a.repeats}:\n| | rows | seconds (end to end) | rows/s | generation s | answer tokens/s "
          "(generation) | peak RSS |\n|---|---|---|---|---|---|---|")
    for name, r in (("`wb eval` (continuous batching)", ours_r), (f"lm-eval `hf`, batch {a.batch}", peer)):
        print(f"| {name} | {r['rows']} | {r['seconds']:.1f} | {rate(r):.2f} | {r['generate_seconds']:.1f} | "
              f"{r['tokens'] / r['generate_seconds']:.1f} | {r['peak_rss_mb']:,.0f} MB |")
    print(f"\nratio wb eval / lm-eval: {rate(ours_r) / rate(peer):.2f}x rows/s end to end, "
          f"{(ours_r['tokens'] / ours_r['generate_seconds']) / (peer['tokens'] / peer['generate_seconds']):.2f}x "
          f"answer tokens/s in generation")


if __name__ == "__main__":
    main()
