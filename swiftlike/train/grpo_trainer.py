"""The GRPO loop: the generic trainer, whose micro-batches come from sampling and scoring completions.

One generation batch (this process's prompts x --num_generations completions) serves --num_iterations
optimizer steps. Groups never span processes, so group advantages are computed locally.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import accel
from ..data.images import IMAGE_INPUTS, cat_images
from ..models.loader import padding_id
from ..rewards import score
from ..rollout import Sampling
from .grpo import group_advantages, nan_std
from .checkpoint import write_atomic
from .trainer import Trainer, chunks_per_epoch, epoch_chunk


@dataclass
class RolloutSettings:
    num_generations: int
    num_iterations: int
    sampling: Sampling
    scale_rewards: str = "group"
    reward_weights: list = field(default_factory=list)
    mask_truncated_completions: bool = False
    log_completions: bool = True
    eval_temperature: float = 0.0


def collate_completions(samples: list[dict], pad_id: int = 0, image_pad_id: int | None = None) -> dict:
    """Prompt + completion rows, right-padded: completions of one generation batch have similar lengths, so
    little is padded, and attention stays per row (a padding-free row of many sequences would need a
    quadratic mask without flash attention). Targets are the completion tokens, sequence after sequence.
    Samples with `pixels` (a vision-language prompt's images) add them in row order, with mm_token_type_ids,
    from which the model computes its M-RoPE positions."""
    width = max(len(s["prompt_ids"]) + len(s["completion_ids"]) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    tgt = torch.full((len(samples), width), -100, dtype=torch.long)
    comp_lens = []
    for i, s in enumerate(samples):
        p, c = s["prompt_ids"], s["completion_ids"]
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        mask[i, :n] = 1
        trained = 0 if s["masked"] else len(c)
        if trained:
            tgt[i, len(p) - 1:len(p) - 1 + trained] = torch.tensor(c)
        comp_lens.append(trained)
    batch = {"input_ids": ids, "attention_mask": mask, "position_ids": torch.arange(width).expand(len(samples), -1),
             "targets": tgt, "completion_lens": torch.tensor(comp_lens),
             "advantages": torch.tensor([s["advantage"] for s in samples], dtype=torch.float32)}
    pixels = [s["pixels"] for s in samples if s.get("pixels") is not None]
    if pixels:
        batch.update(cat_images(pixels))
        batch["mm_token_type_ids"] = ((ids == image_pad_id) & mask.bool()).int()
    return batch


class GRPOTrainer(Trainer):
    best_metric, greater_is_better = "eval_reward", True
    def __init__(self, model, tokenizer, prompts: list[dict], settings, args_json: str, resume_from=None, *,
                 objective, rollout, rewards: list, rs: RolloutSettings, eval_prompts: list[dict] | None = None,
                 engine=None, shown_tokens=()):
        """`shown_tokens`: ids of special tokens the completions' text keeps (the run's --new_special_tokens: a
        reward reads them); the tokenizer's other special tokens are left out of it, as TRL decodes."""
        self.rollout, self.rewards, self.rs = rollout, rewards, rs
        self.shown_tokens = set(shown_tokens)
        self.images = None  # a vision-language run's (ImageProcessing, image pad token id)
        self._buffer: list[dict] | None = None
        self._buffer_metrics: dict = {}
        self._synced_at: int | None = None
        super().__init__(model, tokenizer, prompts, None, settings, args_json, resume_from, eval_prompts,
                         objective=objective, engine=engine)
        self.stop_ids = set(rs.sampling.stop_token_ids)
        if accel.is_main_process():
            self._trim_completions()

    def _trim_completions(self) -> None:
        """completions.jsonl holds this run's lines: a fresh start begins it anew, a resume keeps the lines of the
        steps up to its checkpoint (the steps after it are run again)."""
        path = Path(self.s.output_dir) / "completions.jsonl"
        if not path.is_file():
            return
        if self.step == 0:
            path.unlink()
            return

        def before_resume(line: str) -> bool:
            try:
                return json.loads(line)["step"] <= self.step
            except (ValueError, KeyError, TypeError):
                return True  # (not a line of ours: kept)

        kept = [line for line in path.read_text(encoding="utf-8").splitlines() if line and before_resume(line)]
        write_atomic(path, "".join(line + "\n" for line in kept))

    def _sync(self) -> None:
        """The generation backend samples from the current weights (once per optimizer step at most)."""
        if self._synced_at != self.step:
            self.rollout.sync_weights(self.model)
            self._synced_at = self.step

    # -- which prompts, when -------------------------------------------------------------------
    @property
    def prompts_per_generation(self) -> int:
        """Prompts of one generation batch, over every process."""
        return self.s.per_device_train_batch_size * self.s.gradient_accumulation_steps * accel.world_size() \
            // self.rs.num_generations

    def plan(self) -> tuple[int, int]:
        per_epoch = chunks_per_epoch(len(self.rows), self.prompts_per_generation) * self.rs.num_iterations
        total = self.s.max_steps if self.s.max_steps > 0 else max(1, math.ceil(self.s.num_train_epochs * per_epoch))
        return per_epoch, total

    def _generation_prompts(self, generation: int) -> list[dict]:
        """This process's share of the generation-th batch of prompts."""
        chunk = epoch_chunk(generation, len(self.rows), self.prompts_per_generation, self.s.seed)
        local = self.prompts_per_generation // accel.world_size()
        return [self.rows[i] for i in chunk[accel.rank() * local:(accel.rank() + 1) * local]]

    # -- one generation batch -------------------------------------------------------------------
    def next_batches(self) -> tuple[list[dict], dict]:
        """A fresh generation batch every --num_iterations steps; in between the same one (its rollout metrics
        repeat, its time/* are 0: nothing was generated for that step)."""
        if self._buffer is None or self.step % self.rs.num_iterations == 0:
            self._buffer, self._buffer_metrics = self._generate_and_score(self.step // self.rs.num_iterations)
            return self._buffer, dict(self._buffer_metrics)
        return self._buffer, {k: (0.0 if k.startswith("time/") else v) for k, v in self._buffer_metrics.items()}

    def _generate_and_score(self, generation: int) -> tuple[list[dict], dict]:
        rows, g = self._generation_prompts(generation), self.rs.num_generations
        t0 = time.perf_counter()
        self._sync()
        sampling = Sampling(**{**self.rs.sampling.__dict__,
                               "seed": self.s.seed + 1_000_003 * generation + accel.rank()})
        pixels = self._pixels(rows)
        with self.engine.outside_forward():
            completion_ids = self.rollout.generate([r["prompt_ids"] for r in rows], g, sampling, **pixels)
        t1 = time.perf_counter()

        texts, table, rewards = self._score(rows, completion_ids, g)
        batch_std = self._global_nan_std(rewards) if self.rs.scale_rewards == "batch" else None
        advantages, zero_std = group_advantages(rewards, g, self.rs.scale_rewards, batch_std)
        t2 = time.perf_counter()

        truncated = [not c or c[-1] not in self.stop_ids for c in completion_ids]
        samples = [{"prompt_ids": rows[i // g]["prompt_ids"], "completion_ids": c, "advantage": float(a),
                    "masked": self.rs.mask_truncated_completions and truncated[i],
                    "pixels": pixels["images"][i // g] if pixels else None}
                   for i, (c, a) in enumerate(zip(completion_ids, advantages.tolist()))]
        bs = self.s.per_device_train_batch_size
        pad, image_pad = padding_id(self.tokenizer), self.images[1] if self.images else None
        batches = [collate_completions(samples[i:i + bs], pad, image_pad) for i in range(0, len(samples), bs)]
        self._attach_logps(batches)
        t3 = time.perf_counter()

        lengths = torch.tensor([len(c) for c in completion_ids], dtype=torch.float32)
        metrics = {"reward": self._global_mean(rewards), "reward_std": self._global_nan_std(rewards).item(),
                   "frac_reward_zero_std": self._global_mean(zero_std.float()),
                   "advantages/abs_mean": self._global_mean(advantages.abs()),
                   "completions/mean_length": self._global_mean(lengths),
                   "completions/max_length": self._global_max(lengths),
                   "completions/clipped_ratio": self._global_mean(torch.tensor(truncated, dtype=torch.float32)),
                   "time/generate": round(t1 - t0, 3), "time/score": round(t2 - t1, 3),
                   "time/logps": round(t3 - t2, 3)}
        for j, reward in enumerate(self.rewards):
            metrics[f"rewards/{reward.name}/mean"] = self._global_mean(table[:, j])
            metrics[f"rewards/{reward.name}/std"] = self._global_nan_std(table[:, j]).item()
        # numbered as the log lines are: this batch trains steps self.step + 1 .. + num_iterations, and is written
        # under the first of them that is logged
        trains = range(self.step + 1, min(self.step + self.rs.num_iterations, self.total_steps) + 1)
        logged = [s for s in trains if s % self.s.logging_steps == 0 or s == self.total_steps]
        if self.rs.log_completions and accel.is_main_process() and logged:
            self._log_completions(logged[0], rows, texts, table, rewards, advantages)
        return batches, metrics

    def _pixels(self, rows: list[dict]) -> dict:
        """{"images": each prompt's pixels or None} for the rollout, when any prompt has images; else {}."""
        if self.images is None or not any(r.get("images") for r in rows):
            return {}
        return {"images": [self.images[0].batch(r["images"]) if r.get("images") else None for r in rows]}

    def _score(self, rows: list[dict], completion_ids: list[list[int]], g: int):
        """(texts, [completion][function] rewards, weighted rewards; NaN where no function could score)."""
        hidden = self.stop_ids  # with shown tokens, the other special tokens are left out by hand, these kept
        if self.shown_tokens:
            hidden = hidden | (set(self.tokenizer.all_special_ids) - self.shown_tokens)
        texts = self.tokenizer.batch_decode([[t for t in c if t not in hidden] for c in completion_ids],
                                            skip_special_tokens=not self.shown_tokens)
        kwargs = {"completions": texts, "prompts": [r["messages"] for r in rows for _ in range(g)],
                  "completion_ids": completion_ids}
        columns = dict.fromkeys(k for r in rows for k in r if k not in ("messages", "prompt_ids"))
        for key in columns:  # every column of any row (mixed datasets: None where a row lacks it)
            kwargs[key] = [r.get(key) for r in rows for _ in range(g)]
        if texts:
            table = torch.tensor(score(self.rewards, kwargs, len(texts)), dtype=torch.float32)
        else:
            table = torch.zeros((0, len(self.rewards)))
        weights = torch.tensor(self.rs.reward_weights or [1.0] * len(self.rewards), dtype=torch.float32)
        rewards = (table * weights).nansum(dim=1)
        rewards[torch.isnan(table).all(dim=1)] = float("nan")
        return texts, table, rewards

    @torch.no_grad()
    def evaluate(self) -> dict:
        """One completion per validation prompt (--eval_temperature, greedy by default), scored: the mean
        reward and each function's, over every process."""
        rows = self.eval_rows[accel.rank()::accel.world_size()]
        self._sync()
        sampling = Sampling(**{**self.rs.sampling.__dict__, "temperature": self.rs.eval_temperature,
                               "seed": self.s.seed})
        prompts = [r["prompt_ids"] for r in rows]
        if getattr(self.rollout, "synced", False):  # every rank decodes as many prompts (a sharded model)
            prompts += [self.eval_rows[0]["prompt_ids"]] * (math.ceil(len(self.eval_rows) / accel.world_size())
                                                            - len(rows))
        padding = [self.eval_rows[0]] * (len(prompts) - len(rows))
        with self.engine.outside_forward():
            ids = self.rollout.generate(prompts, 1, sampling, **self._pixels(rows + padding))[:len(rows)] \
                if prompts else []
        _, table, rewards = self._score(rows, ids, 1)
        out = {"eval_reward": self._global_mean(rewards),
               "eval_completions/mean_length": self._global_mean(torch.tensor([len(c) for c in ids],
                                                                              dtype=torch.float32))}
        for j, reward in enumerate(self.rewards):
            out[f"eval_rewards/{reward.name}/mean"] = self._global_mean(table[:, j])
        return out

    @torch.no_grad()
    def _attach_logps(self, batches: list[dict]) -> None:
        """Sampling-policy log-probs when a generation batch is reused; reference log-probs once for all
        its iterations."""
        for b in batches:
            args = [b[k].to(self.device) for k in ("input_ids", "targets", "position_ids", "attention_mask")]
            images = {k: b[k].to(self.device) for k in IMAGE_INPUTS if k in b}
            if self.rs.num_iterations > 1:
                b["old_logps"] = self.engine.call("policy_logps", *args, **images).float().cpu()
            if self.objective.beta != 0.0:
                b["ref_logps"] = self.engine.call("reference_logps", *args, **images).float().cpu()

    def train_step(self, micro_batches):
        start = time.perf_counter()
        loss, grad_norm, total, means = super().train_step(micro_batches)
        means["time/train"] = round(time.perf_counter() - start, 3)
        return loss, grad_norm, total, means

    # -- metrics over processes -----------------------------------------------------------------
    def _global_mean(self, x: torch.Tensor) -> float:
        keep = ~torch.isnan(x)
        total, count = self._global_sums(float(x[keep].sum()), float(keep.sum()))
        return total / max(count, 1.0)

    def _global_max(self, x: torch.Tensor) -> float:
        value = torch.tensor([float(x.max()) if len(x) else 0.0])
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return float(value)

    def _global_nan_std(self, x: torch.Tensor) -> torch.Tensor:
        if not self.distributed:
            return nan_std(x)
        import torch.distributed as dist

        gathered = [torch.empty_like(x) for _ in range(accel.world_size())]
        dist.all_gather(gathered, x.contiguous())
        return nan_std(torch.cat(gathered))

    def _log_completions(self, step: int, rows, texts, table, rewards, advantages) -> None:
        g = self.rs.num_generations
        lines = []
        for i, text in enumerate(texts):
            prompt = rows[i // g]["messages"][-1]["content"]
            per_func = {r.name: (None if math.isnan(v) else v) for r, v in zip(self.rewards, table[i].tolist())}
            lines.append(json.dumps({"step": step, "prompt": prompt, "completion": text, "rewards": per_func,
                                     "reward": None if math.isnan(float(rewards[i])) else float(rewards[i]),
                                     "advantage": float(advantages[i])}, ensure_ascii=False))
        with open(Path(self.s.output_dir) / "completions.jsonl", "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
