"""`wb deploy` under 32 concurrent streaming clients: continuous batching vs the same server one request at a time.

    python benchmarks/serve_latency.py [--clients 32] [--max-tokens 64] [--repeats 1] [--batch 32]

Each side is a `wb deploy` process on this machine (`--max_batch_size 32`, then `--max_batch_size 1`), serving a
randomly initialised Qwen3 (hidden 256, 4 layers, the real 151,936-token tokenizer, fp32). Every client sends
one streaming chat request at the same moment, greedy, up to --max-tokens new tokens; prompts are the synthetic
chat questions of the other benchmarks (8-30 words). Reported per side: requests/s (requests / wall time from
the first send to the last [DONE]), output tokens/s, and time to first token (the first chunk carrying text,
not the role chunk) at p50 and p95; then the ratios. Sides alternate when --repeats > 1. Both sides must
produce the same tokens (greedy): the script checks it.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_model_dir, chat_rows  # noqa: E402


def start_server(model_dir: Path, batch: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "swiftlike.cli.main", "deploy", "--model", str(model_dir),
                             "--template", "qwen3", "--torch_dtype", "float32", "--port", "0",
                             "--max_batch_size", str(batch), "--access_log", "false"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        found = re.search(r" on (http://[\d.]+:\d+)/v1", line)
        if found:
            url = found.group(1)
            break
    else:
        sys.exit("wb deploy did not start:\n" + "".join(lines))
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/health", timeout=5)
            return proc, url
        except OSError:
            time.sleep(0.05)
    sys.exit("wb deploy does not answer /health")


async def one_client(client, model: str, question: str, max_tokens: int, start: float) -> dict:
    t0 = time.perf_counter()
    first, text, tokens = None, "", 0
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0,
        stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        piece = (delta.content or "") + (getattr(delta, "reasoning_content", None) or "")
        if piece and first is None:
            first = time.perf_counter() - t0
        text += piece
    return {"ttft": first if first is not None else time.perf_counter() - t0, "tokens": tokens, "text": text,
            "end": time.perf_counter() - start}


async def burst(url: str, model: str, questions: list[str], max_tokens: int) -> dict:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
    await one_client(client, model, "warm up", 4, time.perf_counter())
    start = time.perf_counter()
    results = await asyncio.gather(*[one_client(client, model, q, max_tokens, start) for q in questions])
    wall = max(r["end"] for r in results)
    ttfts = sorted(r["ttft"] for r in results)
    return {"requests_per_s": len(results) / wall, "tokens_per_s": sum(r["tokens"] for r in results) / wall,
            "ttft_p50": statistics.median(ttfts), "ttft_p95": ttfts[min(len(ttfts) - 1, round(0.95 * len(ttfts)) - 1)],
            "wall": wall, "tokens": sum(r["tokens"] for r in results), "texts": [r["text"] for r in results]}


def run_side(model_dir: Path, batch: int, questions: list[str], max_tokens: int) -> dict:
    proc, url = start_server(model_dir, batch)
    try:
        return asyncio.run(burst(url, str(model_dir), questions, max_tokens))
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="--max_batch_size of the batching side")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    questions = [row["messages"][0]["content"] for row in chat_rows(args.clients, seed=1)]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model_dir(Path(tmp) / "model")
        sides = {f"batched (--max_batch_size {args.batch})": args.batch, "one at a time (--max_batch_size 1)": 1}
        results: dict[str, list[dict]] = {name: [] for name in sides}
        for _ in range(args.repeats):
            for name, batch in sides.items():
                results[name].append(run_side(model_dir, batch, questions, args.max_tokens))
    (ours, ours_runs), (single, single_runs) = [(n, r) for n, r in results.items()]
    if any(r["texts"] != single_runs[0]["texts"] for r in ours_runs + single_runs):
        print("WARNING: the two sides' greedy answers differ")
    print(f"{args.clients} concurrent streaming clients, up to {args.max_tokens} new tokens each, greedy; "
          f"{single_runs[0]['tokens']} output tokens per burst")
    print("| server | requests/s | output tokens/s | TTFT p50 | TTFT p95 |\n|---|---|---|---|---|")
    best = {}
    for name, runs in results.items():
        b = best[name] = {k: statistics.median(r[k] for r in runs)
                          for k in ("requests_per_s", "tokens_per_s", "ttft_p50", "ttft_p95")}
        print(f"| {name} | {b['requests_per_s']:.2f} | {b['tokens_per_s']:.1f} | {b['ttft_p50']:.2f} s | "
              f"{b['ttft_p95']:.2f} s |")
    a, s = best[ours], best[single]
    print(f"| **ratio** | **{a['requests_per_s'] / s['requests_per_s']:.2f}x** | "
          f"**{a['tokens_per_s'] / s['tokens_per_s']:.2f}x** | **{a['ttft_p50'] / s['ttft_p50']:.2f}x** | "
          f"**{a['ttft_p95'] / s['ttft_p95']:.2f}x** |")


if __name__ == "__main__":
    main()
