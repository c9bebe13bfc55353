"""Does GRPO learn a toy task on this machine? The task of tests/test_grpo.py::test_learning_a_verifiable_toy_task
(reward: the share of completion tokens equal to the token the untrained model samples most often; LoRA, lr 1e-2,
20 steps, a Qwen3 miniature), with the dtype and Liger's kernels chosen, printing the reward of every step.

    python benchmarks/grpo_toy.py [--torch_dtype float32|bfloat16] [--use_liger_kernel true|false]
                                  [--static_cache true|false] [--seed 42]

On the CPU it learns in fp32 and in bf16 (2026-11-26: 0.04 -> 1.0 in bf16); on an H100 (bf16, Liger on, the same
day) the reward fell to 0.0. Run on a GPU with Liger on and off to tell whether Liger's kernels are the cause.
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch_dtype", default="auto")
    ap.add_argument("--use_liger_kernel", choices=("true", "false"), default=None)
    ap.add_argument("--static_cache", choices=("true", "false"), default=None,
                    help="the rollout's KV cache (default: static with CUDA graphs on CUDA)")
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    import swiftlike as wb

    target: dict = {}

    def target_share(completion_ids, **_):
        if not target:
            counts = collections.Counter(t for ids in completion_ids for t in ids)
            target["id"] = counts.most_common(1)[0][0]
        return [sum(t == target["id"] for t in ids) / max(1, len(ids)) for ids in completion_ids]

    liger = None if a.use_liger_kernel is None else a.use_liger_kernel == "true"
    static = None if a.static_cache is None else a.static_cache == "true"
    with tempfile.TemporaryDirectory() as out:
        r = wb.grpo(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["arithmetic#16"], reward_funcs=[target_share],
                    num_generations=8, per_device_train_batch_size=16, max_completion_length=8, temperature=0.3,
                    learning_rate=1e-2, max_steps=20, lr_scheduler_type="constant", log_completions=False,
                    torch_dtype=a.torch_dtype, use_liger_kernel=liger, static_cache=static, seed=a.seed,
                    output_dir=out)
    rewards = [round(h["reward"], 3) for h in r.log_history if "reward" in h]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    print("RESULT " + json.dumps({"torch_dtype": a.torch_dtype, "use_liger_kernel": a.use_liger_kernel,
                                  "static_cache": a.static_cache,
                                  "rewards": rewards, "learned": last > 0.5 and last > 3 * first}))


if __name__ == "__main__":
    main()
