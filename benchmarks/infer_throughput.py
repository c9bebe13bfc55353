"""Batch inference throughput: `wb infer --dataset` (continuous batching) vs one `model.generate` call per
prompt and vs transformers' batched `generate` (left-padded, batch 16), on the same model and prompts, greedy.

    python benchmarks/infer_throughput.py [--prompts 256] [--max-new-tokens 128] [--one-by-one 32]

The model: a random Qwen3, hidden 256 x 4 layers, with the real 151,936-token tokenizer (benchmarks/common.py).
Prompts: chat questions with lognormal lengths (long tail). Answer lengths: a random model never ends its
answers, so the benchmark makes it: a forward hook forces the end-of-turn token when a hash of (position,
last token) hits 1 in 40, the same rule for every side, so answers end after geometric (long-tailed) lengths,
mean about 40 tokens, capped at --max-new-tokens; greedy decoding then gives every side the same tokens
(checked). `wb infer --dataset` runs its real pipeline (config, dataset file, engine, results file); only the
model load is wrapped to add the hook. One-by-one generation is timed on --one-by-one prompts spread over the
set (its rate does not depend on which prompts) to keep the run short. Reported: output tokens/s, the ratios,
and model FLOPs utilisation against this machine's fp32 matmul rate measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORDS, build_model_dir, matmul_flops, scratch_dir, write_jsonl  # noqa: E402

END = 151645           # <|im_end|>, the qwen3 template's stop token
END_EVERY = 40         # answers end when hash(position, token) % END_EVERY == 0


def prompt_rows(n: int, seed: int = 0, mean_words: float = 40, max_words: int = 600) -> list[dict]:
    """User questions with lognormal word counts (~1.25 tokens per word)."""
    rng = random.Random(seed)
    sigma = 0.9
    mu = math.log(mean_words) - sigma ** 2 / 2
    rows = []
    for _ in range(n):
        words = min(max_words, max(3, int(rng.lognormvariate(mu, sigma))))
        text = " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "?"
        rows.append({"messages": [{"role": "user", "content": text}]})
    return rows


def add_answer_ends(model):
    """Make the random model end its answers (see the module's docstring); batch-independent by construction."""
    import torch

    def hook(module, args, kwargs, out):
        ids, positions = kwargs["input_ids"], kwargs["position_ids"]
        if ids.shape[1] != 1:  # the prompt's own forward: no answer yet
            return out
        end = (_mix(positions[:, -1].long(), ids[:, -1].long()) % END_EVERY == 0).nonzero().flatten()
        if len(end):
            logits = out.logits
            logits[end, -1, END] = logits[end, -1].max(dim=-1).values + 10
        return out

    model.register_forward_hook(hook, with_kwargs=True)
    torch.set_grad_enabled(False)
    return model


def _mix(a, b):
    """A 32-bit hash of two integer tensors (murmur3's finaliser): a repeating answer still ends at random."""
    mask = 0xFFFFFFFF
    h = (a * 0x9E3779B1 + b) & mask
    h = ((h ^ (h >> 16)) * 0x85EBCA6B) & mask
    h = ((h ^ (h >> 13)) * 0xC2B2AE35) & mask
    return h ^ (h >> 16)


def flops_per_token(model) -> float:
    """2 x the matmul weights a decoded token passes through (the output layer included, embeddings not)."""
    return 2 * sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n) + \
        2 * model.get_output_embeddings().weight.numel() * (model.config.tie_word_embeddings is True)


def run_wb_infer(model_dir: Path, data: Path, out: Path, max_new: int) -> tuple[float, dict]:
    """`wb infer --dataset` through its pipeline; the model load wrapped to add the answer ends. Timed: the
    generation (reading the data and loading the model are not, as for the other sides)."""
    import swiftlike.pipelines.infer as infer
    from swiftlike.config import InferConfig, build_config

    load, answer, timer = infer.load_for_inference, infer._answer_rows, {}

    def load_with_ends(*a, **k):
        model, tokenizer, template = load(*a, **k)
        return add_answer_ends(model), tokenizer, template

    def timed(*a, **k):
        start = time.perf_counter()
        answer(*a, **k)
        timer["seconds"] = time.perf_counter() - start

    infer.load_for_inference, infer._answer_rows = load_with_ends, timed
    cfg = build_config(InferConfig, {"model": str(model_dir), "template": "qwen3", "torch_dtype": "float32",
                                     "dataset": [str(data)], "output": str(out), "max_new_tokens": max_new,
                                     "enable_thinking": False})
    infer.run_infer(cfg)
    infer.load_for_inference, infer._answer_rows = load, answer
    seconds = timer["seconds"]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return seconds, {line["row"]: line for line in lines}


def generate_padded(model, prompts: list[list[int]], max_new: int, batch: int) -> tuple[float, list[list[int]]]:
    import torch

    outputs = []
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        group = prompts[i:i + batch]
        width = max(len(p) for p in group)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in group])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group])
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                             eos_token_id=END, pad_token_id=0, temperature=None, top_p=None, top_k=None)
        outputs += [_cut(row[width:].tolist()) for row in out]
    return time.perf_counter() - start, outputs


def _cut(ids: list[int]) -> list[int]:
    return ids[:ids.index(END)] if END in ids else ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--one-by-one", type=int, default=32, help="prompts timed one model.generate call each")
    parser.add_argument("--batch", type=int, default=32, help="padded batch size of the transformers baseline "
                        "(default: wb infer's --max_batch_size)")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swiftlike.templates import get_template

    work = scratch_dir("wb-infer-bench-")
    model_dir = build_model_dir(work / "model")
    rows = prompt_rows(args.prompts)
    data = write_jsonl(rows, work / "prompts.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = get_template("qwen3", tokenizer)
    prompts = [template.encode_prompt(r["messages"], enable_thinking=False) for r in rows]
    lengths = sorted(len(p) for p in prompts)
    print(f"{len(prompts)} prompts: tokens p50 {lengths[len(lengths) // 2]} p90 {lengths[int(0.9 * len(lengths))]} "
          f"max {lengths[-1]}; greedy, up to {args.max_new_tokens} new tokens; torch threads "
          f"{torch.get_num_threads()}")
    rate = matmul_flops()

    seconds_wb, lines = run_wb_infer(model_dir, data, work / "out.jsonl", args.max_new_tokens)
    ours = [lines[f"{data}:{i + 1}"] for i in range(len(rows))]
    tokens_wb = sum(line["usage"]["completion_tokens"] for line in ours)
    answer = sorted(line["usage"]["completion_tokens"] for line in ours)
    print(f"answers: tokens p50 {answer[len(answer) // 2]} p90 {answer[int(0.9 * len(answer))]} max {answer[-1]}, "
          f"mean {tokens_wb / len(ours):.1f}")

    model = add_answer_ends(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval())
    fpt = flops_per_token(model)
    seconds_pad, padded = generate_padded(model, prompts, args.max_new_tokens, args.batch)
    tokens_pad = sum(len(o) for o in padded)
    step = max(1, len(prompts) // args.one_by_one)
    chosen = list(range(0, len(prompts), step))[:args.one_by_one]
    start = time.perf_counter()
    single = [generate_padded(model, [prompts[i]], args.max_new_tokens, 1)[1][0] for i in chosen]
    seconds_one = time.perf_counter() - start
    tokens_one = sum(len(o) for o in single)

    def same(ids, line):  # the answer wb infer wrote, from the same tokens
        return len(ids) == line["usage"]["completion_tokens"] and \
            template.parse_response(tokenizer.decode(ids))["content"] == line["response"]

    same_pad = sum(same(p, line) for p, line in zip(padded, ours))
    same_one = sum(same(single[j], ours[i]) for j, i in enumerate(chosen))
    print(f"same answers as wb infer: padded batches {same_pad}/{len(ours)}, one by one {same_one}/{len(chosen)}")

    results = {"wb infer --dataset": (tokens_wb, seconds_wb),
               f"transformers generate, padded batch {args.batch}": (tokens_pad, seconds_pad),
               f"transformers generate, one by one ({len(chosen)} prompts)": (tokens_one, seconds_one)}
    print("\n| | output tokens | seconds | tokens/s | MFU |\n|---|---|---|---|---|")
    for name, (tokens, seconds) in results.items():
        print(f"| {name} | {tokens} | {seconds:.1f} | {tokens / seconds:.1f} | "
              f"{100 * fpt * tokens / seconds / rate:.1f}% |")
    ours_rate = tokens_wb / seconds_wb
    print(f"\nwb infer vs one by one: {ours_rate / (tokens_one / seconds_one):.2f}x; vs padded batch {args.batch}: "
          f"{ours_rate / (tokens_pad / seconds_pad):.2f}x")
    print(f"machine fp32 matmul rate {rate / 1e9:.1f} GFLOP/s; {fpt / 1e6:.1f} MFLOP per output token")


if __name__ == "__main__":
    main()
