"""The SFT training loop: explicit, token-normalised, resumable, single- or multi-process."""
from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import accel
from ..errors import UserError
from .checkpoint import latest_checkpoint, load_training_state, prepare_checkpoint_dir, save_checkpoint
from .engines import DDPEngine, EngineFactory, EngineSettings
from .loss import CausalLMLoss
from .tracking import Tracker


class _Stopped(KeyboardInterrupt):
    """Ctrl-C honoured between two steps (the checkpoint, if asked for, is saved)."""


def short(value: float) -> float:
    """A logged number to 6 significant digits (0.0025, not 0.0025000000000000014)."""
    return float(f"{value:.6g}")


@dataclass
class LoopSettings:
    output_dir: str
    learning_rate: float
    max_steps: int
    num_train_epochs: float
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    lr_scheduler_type: str
    warmup_ratio: float
    warmup_steps: int
    weight_decay: float
    max_grad_norm: float
    seed: int
    logging_steps: int
    save_steps: int
    save_total_limit: int | None
    report_to: str
    eval_steps: int | None = None
    early_stopping_patience: int | None = None  # evaluations without improvement before the run stops
    save_on_interrupt: bool = True
    vit_lr: float | None = None      # vision-language models: the vision encoder's learning rate
    aligner_lr: float | None = None  # and the merger's
    lora_plus_ratio: float | None = None  # LoRA+: the B matrices' learning rate over the others'
    optim: str = "adamw"  # the optimizer (train/engines.OPTIMIZERS) and its AdamW hyperparameters
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    min_lr_rate: float | None = None  # cosine_with_min_lr / warmup_stable_decay: the floor over the peak
    lr_decay_ratio: float = 0.1       # warmup_stable_decay: the decaying share of the steps


@dataclass
class TrainResult:
    output_dir: str
    checkpoint: str
    metrics: dict
    log_history: list = field(default_factory=list)
    already_finished: bool = False  # resumed from a checkpoint that had run every planned step (or stopped early)
    best_checkpoint: str | None = None  # the checkpoint with the best validation metric (Trainer.best_metric)
    evaluation: dict = field(default_factory=dict)  # --eval_after_train: what was measured, as logged


def schedule_options(s: LoopSettings, warmup: int, total: int) -> dict:
    """transformers' keyword arguments of the schedules that take more than warm-up and length."""
    if s.lr_scheduler_type == "cosine_with_min_lr":
        return {"min_lr_rate": 0.1 if s.min_lr_rate is None else s.min_lr_rate}
    if s.lr_scheduler_type == "warmup_stable_decay":  # (the decay fits in what the warm-up leaves)
        decay = min(max(1, round(s.lr_decay_ratio * total)), max(0, total - warmup))
        return {"num_decay_steps": decay, "min_lr_ratio": s.min_lr_rate or 0.0}  # (stable: what is left)
    return {}


def batch_tokens(batch: dict) -> int:
    """Non-padding tokens of a collated batch."""
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())


def rows_per_step(s: LoopSettings) -> int:
    return s.per_device_train_batch_size * s.gradient_accumulation_steps * accel.world_size()


def chunks_per_epoch(n_rows: int, size: int) -> int:
    """Chunks of `size` rows that cover every row once (the last one completed, see epoch_chunk)."""
    return max(1, math.ceil(n_rows / size))


def plan_steps(n_rows: int | None, s: LoopSettings) -> tuple[int, int]:
    """(steps per epoch, total steps): every row is trained once an epoch. A stream (n_rows None) has no epochs:
    it runs --max_steps."""
    if n_rows is None:
        return s.max_steps, s.max_steps
    per_epoch = chunks_per_epoch(n_rows, rows_per_step(s))
    total = s.max_steps if s.max_steps > 0 else max(1, math.ceil(s.num_train_epochs * per_epoch))
    return per_epoch, total


def epoch_chunk(index: int, n_rows: int, size: int, seed: int) -> list[int]:
    """Row indices of the index-th chunk of `size` rows, in an order seeded per epoch. Every row of an epoch is
    in one of its chunks: the last, when the rows do not fill it, is completed with the epoch's first rows (a few
    rows twice an epoch, as every step has its full batch; with fewer rows than one chunk they are cycled)."""
    epoch, k = divmod(index, chunks_per_epoch(n_rows, size))
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    chunk = order[k * size:(k + 1) * size]
    if len(chunk) < size:
        cycled = order * math.ceil(size / max(1, n_rows))
        chunk = chunk + cycled[:size - len(chunk)]
    return chunk


def step_rows(step: int, n_rows: int, s: LoopSettings) -> list[list[int]]:
    """This rank's micro-batches (row indices) for a global optimizer step."""
    bs, accum = s.per_device_train_batch_size, s.gradient_accumulation_steps
    chunk = epoch_chunk(step, n_rows, rows_per_step(s), s.seed)
    mine = chunk[accel.rank() * bs * accum:(accel.rank() + 1) * bs * accum]
    return [mine[i * bs:(i + 1) * bs] for i in range(accum)]


class Trainer:
    best_metric, greater_is_better = "eval_loss", False  # which checkpoint is best (GRPO: its eval reward)

    def __init__(self, model, tokenizer, rows: list, collate, settings: LoopSettings, args_json: str,
                 resume_from: Path | None = None, eval_rows: list | None = None, eval_collate=None,
                 objective=None, engine: EngineFactory | None = None):
        self.model, self.tokenizer, self.rows, self.collate, self.s = model, tokenizer, rows, collate, settings
        self.eval_rows, self.eval_collate = eval_rows or [], eval_collate or collate
        self.args_json = args_json
        self.after_train = None  # called with the final checkpoint (main process), returns metrics to log
        self.extra_files: dict[str, str] = {}  # written into every checkpoint (a VL model's preprocessor config)
        self.device = next(p.device for p in model.parameters())
        # the objective: forward(**batch) -> (summed loss, weight, metric sums); weight(batch) is known up front
        self.objective = objective or CausalLMLoss(model)
        self.distributed = accel.world_size() > 1
        parts = {"vit": settings.vit_lr, "aligner": settings.aligner_lr}
        es = EngineSettings(settings.learning_rate, settings.weight_decay, settings.max_grad_norm,
                            settings.gradient_accumulation_steps, {k: v for k, v in parts.items() if v}, settings.seed,
                            settings.lora_plus_ratio, settings.optim, (settings.adam_beta1, settings.adam_beta2),
                            settings.adam_epsilon)
        # DDP (or one process), DeepSpeed or FSDP2: wraps the objective and owns the optimizer
        self.engine = (engine or DDPEngine)(self.objective, model, es)
        self.loss_module, self.optimizer = self.engine.module, self.engine.optimizer
        self.streaming = not isinstance(rows, list)
        self.per_epoch, self.total_steps = self.plan()
        from transformers import get_scheduler

        warmup = settings.warmup_steps or int(settings.warmup_ratio * self.total_steps)
        self.scheduler = get_scheduler(settings.lr_scheduler_type, self.optimizer, num_warmup_steps=warmup,
                                       num_training_steps=self.total_steps,
                                       scheduler_specific_kwargs=schedule_options(settings, warmup, self.total_steps))
        self.step, self.trained_tokens, self.log_history = 0, 0, []
        self.first_loss = self.final_loss = None  # of the whole run (a resumed run keeps its first session's)
        self._stop_requested = False
        self.input_tokens = 0  # every non-padding token processed in this session (for throughput)
        self.slot_tokens = 0  # every position processed, padding included
        self.saved, self.saved_step, self.resumed_from = None, None, resume_from  # (this run's checkpoints)
        self.resumed_plan = None  # the total steps the resumed checkpoint's run had planned
        # validation: the best value seen, evaluations since it improved, the best checkpoint (value, name), and
        # whether --early_stopping_patience ended the run
        self.best_seen, self.stale_evals, self.best_checkpoint, self.stopped_early = None, 0, None, False
        self.last_eval = None  # (step, value) of the latest evaluation
        if resume_from is not None:
            self._restore(resume_from)
            self.saved_step = self.step

    def plan(self) -> tuple[int, int]:
        """(optimizer steps per epoch, total steps)."""
        return plan_steps(None if self.streaming else len(self.rows), self.s)

    def next_batches(self) -> tuple[list[dict], dict]:
        """The current optimizer step's micro-batches, and metrics of making them (none here). A collate that
        encodes as it goes (data/stream.LazyCollate) may make more micro-batches of a group of rows (the pieces of
        a split text); every process then runs as many as the one with the most (sharded engines gather weights
        in every forward), the others' extra ones training nothing."""
        split = getattr(self.collate, "micro_batches", None)
        if split is None:
            return [self.collate(rows) for rows in self._step_rows()], {}
        batches = [b for rows in self._step_rows() for b in split(rows, self.s.per_device_train_batch_size)]
        if self.distributed:
            import torch.distributed as dist

            most = torch.tensor([len(batches)], device=self.device)
            dist.all_reduce(most, op=dist.ReduceOp.MAX)
            batches += [self.collate.empty() for _ in range(int(most) - len(batches))]
        return batches, {}

    def _step_rows(self) -> list[list]:
        """This process's micro-batches (rows) for the current optimizer step."""
        if not self.streaming:
            groups = step_rows(self.step, len(self.rows), self.s)
            return [[self.rows[i] for i in g] for g in groups]
        n, bs, accum = rows_per_step(self.s), self.s.per_device_train_batch_size, self.s.gradient_accumulation_steps
        rows = self.rows.take(self.step * n, n)
        mine = rows[accel.rank() * bs * accum:(accel.rank() + 1) * bs * accum]
        return [mine[i * bs:(i + 1) * bs] for i in range(accum)]

    # -- one optimizer step ------------------------------------------------------------------
    def _batch_to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) for k, v in batch.items()}

    def train_step(self, micro_batches: list[dict]) -> tuple[float | None, float, int, dict]:
        """Normalised by the objective's weight (trained tokens for SFT, pairs for DPO) over every micro-batch
        and rank, so batch 8 x accum 1 == batch 1 x accum 8. The loss is None for a step with nothing to train."""
        # one collective for the step's weight and its tokens (throughput: non-padding, and every position)
        total, inputs, slots = self._global_sums(sum(self.objective.weight(b) for b in micro_batches),
                                                 sum(batch_tokens(b) for b in micro_batches),
                                                 sum(b["input_ids"].numel() for b in micro_batches))
        self.input_tokens += int(inputs)
        self.slot_tokens += int(slots)
        if total == 0:  # every row of the step was dropped as it was encoded (--streaming, --lazy_tokenize):
            self.scheduler.step()  # no update at all (AdamW would still move the weights: momentum, decay)
            return None, 0.0, 0, {}
        # DDP averages gradients over ranks
        scale = torch.tensor(accel.world_size() / max(total, 1.0), dtype=torch.float64)
        loss_sum, extras = 0.0, {}
        self.loss_module.train()
        for i, batch in enumerate(micro_batches):
            part, metrics = self.engine.forward_backward(self._batch_to_device(batch), scale,
                                                         last=i == len(micro_batches) - 1)
            loss_sum += part.detach().item()
            for k, v in metrics.items():
                extras[k] = extras.get(k, 0.0) + float(v)
        grad_norm = self.engine.step()
        self.scheduler.step()
        names = sorted(extras)
        loss_sum, *sums = self._global_sums(loss_sum, *(extras[k] for k in names))
        means = {k: v / max(total, 1.0) for k, v in zip(names, sums)}
        finalize = getattr(self.objective, "finalize_metrics", None)
        if finalize is not None and means:
            means = finalize(means)
        return loss_sum / max(total, 1.0), grad_norm, int(total), means

    def _global_sum(self, value: float) -> float:
        return self._global_sums(value)[0]

    def _global_sums(self, *values: float) -> list[float]:
        """Each value summed over the processes, in one collective (every process calls it alike)."""
        if not self.distributed:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def _dropped(self) -> Counter | None:
        """Rows dropped as they were encoded (--streaming, --lazy_tokenize), over every process: each encodes only
        its own micro-batches. Every process calls it."""
        dropped = getattr(self.collate, "dropped", None)
        if dropped is None or not self.distributed:
            return dropped
        import torch.distributed as dist

        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, dict(dropped))
        return sum((Counter(part) for part in parts), Counter())

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Weighted mean loss (and the objective's metrics) over the validation rows; each process takes every
        world_size-th batch. Every process runs as many forwards (a sharded engine's forward is a collective):
        one with fewer batches repeats its first and counts it not."""
        self.loss_module.eval()
        bs, total, count, sums = self.s.per_device_train_batch_size, 0.0, 0.0, {}
        batches = [self.eval_rows[i:i + bs] for i in range(0, len(self.eval_rows), bs)]
        mine = batches[accel.rank()::accel.world_size()]
        most = -(-len(batches) // accel.world_size())
        for i, batch in enumerate(mine + [batches[0]] * (most - len(mine))):
            part, n, metrics = self.loss_module(**self._batch_to_device(self.eval_collate(batch)))
            if i >= len(mine):  # (its metric names still summed over the processes below, as zeros)
                for k in metrics:
                    sums.setdefault(k, 0.0)
                continue
            total += float(part)
            count += float(n)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        self.loss_module.train()
        names = sorted(sums)
        count, total, *summed = self._global_sums(count, total, *(sums[k] for k in names))
        count = max(count, 1.0)
        means = {k: v / count for k, v in zip(names, summed)}
        finalize = getattr(self.objective, "finalize_metrics", None)
        if finalize is not None and means:
            means = finalize(means)
        return {"eval_loss": total / count, **{f"eval_{k}": v for k, v in means.items()}}

    # -- the loop ----------------------------------------------------------------------------
    def train(self) -> TrainResult:
        from tqdm.auto import tqdm

        main = accel.is_main_process()
        unit = getattr(self.objective, "unit", "tokens")  # what the loss is averaged over: tokens or pairs
        finished_before = self.step >= self.total_steps or self.stopped_early
        report_to = self.s.report_to if main and not finished_before else "none"  # no empty tracker runs
        tracker = Tracker(report_to, self.s.output_dir, json.loads(self.args_json))
        import sys

        # redraw often on a terminal; in log files (CI, clusters) only every 10 s
        interval = 0.1 if sys.stderr.isatty() else 10.0
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", disable=not main, dynamic_ncols=True,
                   mininterval=interval)
        start = time.perf_counter()
        evaluation = {}
        try:
            with self._interruptible(bar):
                checkpoint = self._loop(bar, tracker, unit)
            seconds = time.perf_counter() - start
            dropped = self._dropped()  # (collective: before the main process alone evaluates)
            bar.close()
            if self.after_train is not None and main and checkpoint is not None:
                self.engine.release()  # training is over: free what only it needed
                accel.empty_cache()
                evaluation = self.after_train(checkpoint)
                tracker.log(evaluation, self.step)
        finally:  # flushed also when interrupted or failing: the scalars up to the last checkpoint are kept
            bar.close()
            tracker.close()
        result = self._result(checkpoint, seconds, finished_before, dropped)
        result.evaluation = evaluation
        if self.best_checkpoint is not None:
            value, result.best_checkpoint = self.best_checkpoint
            if main:
                print(f"[wb] best checkpoint: {result.best_checkpoint} ({self.best_metric} {short(value)})")
        return result

    def _loop(self, bar, tracker, unit: str) -> Path | None:
        main = accel.is_main_process()
        window_tokens, window_start = 0, time.perf_counter()
        checkpoint = None
        while self.step < self.total_steps and not self.stopped_early:
            # every process stops at the same step (one that stopped alone would leave the others in a collective)
            if self._global_sum(self._stop_requested) > 0:
                self._stop(bar)
            batches, batch_metrics = self.next_batches()
            loss, grad_norm, tokens, step_metrics = self.train_step(batches)
            step_metrics = {**batch_metrics, **step_metrics}
            self.step += 1
            self.trained_tokens += tokens
            window_tokens += tokens
            if loss is not None:
                self.first_loss = loss if self.first_loss is None else self.first_loss
                self.final_loss = loss
            elapsed = time.perf_counter() - window_start
            tps = window_tokens / elapsed if elapsed > 0 else 0.0
            lr = self.scheduler.get_last_lr()[0]
            bar.set_postfix({"loss": "-" if loss is None else f"{loss:.4f}", "lr": f"{lr:.2e}",
                             f"{unit[:3]}/s": f"{tps:.1f}"})
            bar.update(1)
            if self.step % self.s.logging_steps == 0 or self.step == self.total_steps:
                epoch = None if self.streaming else round(self.step / self.per_epoch, 4)
                entry = {"step": self.step, "epoch": epoch, "loss": loss and short(loss), "learning_rate": short(lr),
                         "grad_norm": short(grad_norm), f"{unit}_per_second": round(tps, 1),
                         f"trained_{unit}": self.trained_tokens, **{k: short(v) for k, v in step_metrics.items()}}
                if loss is None:  # nothing was trained: no loss to log (not 0.0)
                    del entry["loss"], entry["grad_norm"]
                self.log_history.append(entry)
                tracker.log({k: v for k, v in entry.items() if k != "step" and v is not None}, self.step)
                if main:
                    bar.write(json.dumps(entry))
                window_tokens, window_start = 0, time.perf_counter()
            eval_every = self.s.eval_steps or self.s.save_steps
            if self.eval_rows and (self.step % eval_every == 0 or self.step == self.total_steps):
                scores = self.evaluate()
                entry = {"step": self.step, **{k: short(v) for k, v in scores.items()}}
                self.log_history.append(entry)
                tracker.log(scores, self.step)
                if main:
                    bar.write(json.dumps(entry))
                self._patience(scores)
            if self.step % self.s.save_steps == 0 or self.step == self.total_steps or self.stopped_early:
                checkpoint = self.save()
        if self.stopped_early and main and checkpoint is not None:
            bar.write(f"[wb] early stop at step {self.step} of {self.total_steps}: {self.best_metric} has not improved "
                      f"for {self.stale_evals} evaluations (--early_stopping_patience)")
        return checkpoint

    def _better(self, value: float, than: float | None) -> bool:
        return than is None or (value > than if self.greater_is_better else value < than)

    def _patience(self, scores: dict) -> None:
        """Count the evaluations since the validation metric last improved; enough of them, before the last planned
        step, end the run."""
        value = scores.get(self.best_metric)
        if value is None:
            return
        self.last_eval = (self.step, value)
        if self._better(value, self.best_seen):
            self.best_seen, self.stale_evals = value, 0
        else:
            self.stale_evals += 1
        self.stopped_early = self._patience_spent() and self.step < self.total_steps

    def _patience_spent(self) -> bool:
        patience = self.s.early_stopping_patience
        return patience is not None and self.stale_evals >= patience

    def _best_after_saving(self, path: Path) -> None:
        """The best checkpoint, counting this step's if it was evaluated (kept by --save_total_limit)."""
        if self.last_eval is not None and self.last_eval[0] == self.step and \
                self._better(self.last_eval[1], self.best_checkpoint and self.best_checkpoint[0]):
            self.best_checkpoint = (self.last_eval[1], str(path))

    def _result(self, checkpoint: Path | None, seconds: float, finished_before: bool,
                dropped: Counter | None) -> TrainResult:
        main = accel.is_main_process()
        unit = getattr(self.objective, "unit", "tokens")
        logged = [h["loss"] for h in self.log_history if h.get("loss") is not None]
        # the last loss this session computed; else (it trained nothing: finished before, or every row it drew was
        # dropped) the run's last logged one
        final = self.final_loss if self.final_loss is not None and not finished_before else (logged or [None])[-1]
        metrics = {"steps": self.step, f"trained_{unit}": self.trained_tokens, "input_tokens": self.input_tokens,
                   "padding_efficiency": round(self.input_tokens / max(self.slot_tokens, 1), 4),
                   "train_seconds": round(seconds, 2),
                   "first_loss": self.first_loss if self.first_loss is not None else (logged or [None])[0],
                   "final_loss": final}
        if dropped:
            metrics["dropped_while_training"] = dict(dropped)
            if main:
                print("[wb] data: dropped while training: " + ", ".join(f"{n} ({why})" for why, n in dropped.items()))
        evals = [h for h in self.log_history if any(k.startswith("eval_") for k in h)]
        if evals:
            metrics.update({k: v for k, v in evals[-1].items() if k != "step"})
        ckpt = checkpoint or self.saved or self.resumed_from or latest_checkpoint(self.s.output_dir)
        return TrainResult(self.s.output_dir, str(ckpt), metrics,
                           self.log_history, already_finished=finished_before)

    # -- Ctrl-C --------------------------------------------------------------------------------
    @contextmanager
    def _interruptible(self, bar):
        """First Ctrl-C (or, in one process, SIGTERM: a scheduler's preemption): finish the current step, save a
        checkpoint (--save_on_interrupt) and stop, every process at the same step; a second Ctrl-C stops at once.
        Either way the last line says what `--resume` continues from. Under torchrun the stop comes as SIGINT (`wb`
        passes its Ctrl-C, SIGTERM or SIGHUP on as one, cli/launch.py), which torchrun forwards, killing 30 s
        later; torchrun's own SIGTERM, sent when another worker failed, ends the process as it always did."""
        import signal
        import threading

        handled = threading.current_thread() is threading.main_thread()
        signals = (signal.SIGINT,) if "TORCHELASTIC_RUN_ID" in os.environ else (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.getsignal(sig) for sig in signals} if handled else {}

        def request_stop(signum, frame):
            if self._stop_requested:
                if signum == signal.SIGINT:  # (a scheduler may send SIGTERM twice: still finishing the step)
                    raise KeyboardInterrupt
                return
            self._stop_requested = True
            if accel.is_main_process():  # os.write, not print: the signal may arrive amid a buffered write
                what = "interrupt" if signum == signal.SIGINT else "SIGTERM"
                os.write(2, (f"\n[wb] {what}: finishing this step" + (" and saving a checkpoint" if
                                                                     self.s.save_on_interrupt else "")
                             + "; press Ctrl-C again to stop at once\n").encode())

        for sig in previous:
            signal.signal(sig, request_stop)
        try:
            yield
        except KeyboardInterrupt as e:
            bar.close()
            if accel.is_main_process() and not isinstance(e, _Stopped):
                print(f"[wb] interrupted at step {self.step} of {self.total_steps}; {self._resume_hint()}")
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, bar) -> None:
        """A requested stop between steps: save (atomically, as every checkpoint) and raise KeyboardInterrupt."""
        bar.close()
        if self.s.save_on_interrupt and self.step > 0 and self.saved_step != self.step:
            self.save()
        if accel.is_main_process():
            print(f"[wb] stopped at step {self.step} of {self.total_steps}; {self._resume_hint()}")
        self._stop_requested = False
        raise _Stopped

    def _resume_hint(self) -> str:
        ckpt = self.saved or self.resumed_from  # this run's: an older run's checkpoints may still be there
        if ckpt is None:
            return "no checkpoint yet: nothing to resume"
        return f"--resume continues from {ckpt}" if ckpt == latest_checkpoint(self.s.output_dir) else \
            f"--resume_from_checkpoint {ckpt} continues it"

    # -- checkpoints -------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Every rank takes part (engines gather sharded weights and states); rank 0 writes the checkpoint."""
        tmp = prepare_checkpoint_dir(self.s.output_dir, self.step)
        weights = self.engine.model_state_dict()
        optimizer = self.engine.optimizer_state()
        dropped = self._dropped()
        self.engine.save_engine_state(tmp)
        path = None
        self._best_after_saving(Path(self.s.output_dir) / f"checkpoint-{self.step}")
        if accel.is_main_process():
            for name, text in self.extra_files.items():
                (tmp / name).write_text(text + "\n", encoding="utf-8")
            state = {"global_step": self.step, "total_steps": self.total_steps, "trained_tokens": self.trained_tokens,
                     "first_loss": self.first_loss, "log_history": self.log_history,
                     "best_seen": self.best_seen, "evals_without_improvement": self.stale_evals,
                     "stopped_early": self.stopped_early}
            if self.best_checkpoint is not None:  # (transformers' names)
                state["best_metric"], state["best_model_checkpoint"] = self.best_checkpoint
            if dropped:  # counted over a resume
                state["dropped_while_training"] = dict(dropped)
            training_state = {"optimizer": optimizer, "optim": self.s.optim, "scheduler": self.scheduler.state_dict(),
                              "rng": accel.rng_state(), "step": self.step, "trained_tokens": self.trained_tokens}
            best = Path(self.best_checkpoint[1]) if self.best_checkpoint else None
            keep = best.name if best is not None and best.parent.resolve() == Path(self.s.output_dir).resolve() \
                else None  # (a resumed run's best may lie in the directory it was resumed from)
            path = save_checkpoint(tmp, self.step, self.model, self.tokenizer, self.args_json, state,
                                   training_state, self.s.save_total_limit, weights, keep=keep)
            self.saved = path
        self.saved_step = self.step
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()
        return path

    def _restore(self, ckpt: Path) -> None:
        state = load_training_state(ckpt)
        # this run's learning rates, weight decay, betas and epsilon (the optimizer's and scheduler's states hold the
        # saved run's: a --learning_rate changed on resume was silently not applied), at the schedule's saved position
        saved = state.get("optim", "adamw")  # (checkpoints from before --optim: AdamW)
        if saved != self.s.optim:  # another optimizer's state: its moments are not these (or not there at all)
            raise UserError(f"{ckpt} was trained with --optim {saved}, this run asks for --optim {self.s.optim}; "
                            f"resume it with --optim {saved} (its optimizer state is that optimizer's)")
        asked = [{"initial_lr": g.get("initial_lr", g["lr"]),
                  **{k: g[k] for k in ("weight_decay", "betas", "eps") if k in g}} for g in self.optimizer.param_groups]
        self.engine.load_optimizer_state(state["optimizer"], ckpt)
        self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler.base_lrs = [a["initial_lr"] for a in asked]
        position = self.scheduler.last_epoch
        for group, a, factor in zip(self.optimizer.param_groups, asked, self.scheduler.lr_lambdas):
            group.update(a, lr=a["initial_lr"] * factor(position))
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        accel.set_rng_state(state["rng"])
        self.step, self.trained_tokens = state["step"], state["trained_tokens"]
        history = json.loads((Path(ckpt) / "trainer_state.json").read_text())
        self.log_history, self.resumed_plan = history.get("log_history", []), history.get("total_steps")
        self.best_seen, self.stale_evals = history.get("best_seen"), history.get("evals_without_improvement", 0)
        # stopped early: and still so by this run's patience (a larger --early_stopping_patience, or none, goes on)
        self.stopped_early = bool(history.get("stopped_early")) and self._patience_spent()
        best = history.get("best_model_checkpoint")
        if best and Path(best).is_dir():  # (not one --save_total_limit removed after the checkpoint resumed from)
            self.best_checkpoint = (history["best_metric"], best)
        logged = [h["loss"] for h in self.log_history if h.get("loss") is not None]  # (checkpoints older than
        # "first_loss")
        self.first_loss = history.get("first_loss", logged[0] if logged else None)
        dropped = getattr(self.collate, "dropped", None)
        if dropped is not None and accel.is_main_process():  # (the others' counts are added to it when summed)
            dropped.update(history.get("dropped_while_training", {}))

