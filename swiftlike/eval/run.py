"""One model on one dataset: prompts in, answers scored, a result with its standard error and one prediction
record per row."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import UserError
from .metrics import METRICS


@dataclass
class TaskResult:
    dataset: str
    metric: str
    score: float
    stderr: float
    n: int
    predictions: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {"dataset": self.dataset, "metric": self.metric, "score": self.score, "stderr": self.stderr,
                "n": self.n}


def mean_and_stderr(scores: list[float]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / sqrt(n))."""
    n = len(scores)
    mean = sum(scores) / n
    if n < 2:
        return mean, 0.0
    variance = sum((s - mean) ** 2 for s in scores) / (n - 1)
    return mean, math.sqrt(variance / n)


def evaluate(rows: list, backend, metric_name: str, gen, dataset: str, progress=None, on_record=None) -> TaskResult:
    """Score `backend`'s answers to `rows` (PromptRow: messages, tools, reference) with a generation metric;
    `on_record` sees each row's record as soon as it is scored (kept if the run stops early)."""
    metric = METRICS[metric_name]
    prompts = [(row.messages, row.tools) for row in rows]
    scores, predictions = [], []
    for row, answer in zip(rows, backend.answers(prompts, gen)):
        reference = row.reference["content"]
        extracted = metric.extract(answer)
        score = metric.score(extracted, reference)
        scores.append(score)
        record = {"key": row.key, "prompt": row.messages, "prediction": answer, "extracted": extracted,
                  "reference": reference, "score": score}
        if metric.binary:
            record["correct"] = bool(score)
        predictions.append(record)
        if on_record is not None:
            on_record(record)
        if progress is not None:
            progress.update(1)
    score, stderr = mean_and_stderr(scores)
    return TaskResult(dataset, metric_name, score, stderr, len(scores), predictions)


def check_references(rows: list) -> None:
    """Every row must carry the answer it is scored against (its final assistant turn)."""
    for row in rows:
        if row.reference is None or not isinstance(row.reference.get("content"), str):
            raise UserError(f"{row.key}: no reference answer to score against (the row needs a final assistant "
                            "turn, e.g. a response/answer/output column)")


def evaluate_perplexity(model, encoded: list[dict], dataset: str, keys: list[str]) -> TaskResult:
    """Perplexity of the labelled tokens (the reference answers; every token of plain text), one row at a time;
    the per-row records carry each row's own perplexity."""
    from ..models.perplexity import perplexity

    per_row = [perplexity(model, [enc]) for enc in encoded]
    tokens = [sum(1 for label in enc["labels"][1:] if label != -100) for enc in encoded]
    total = sum(tokens)
    mean_nll = sum(math.log(p) * t for p, t in zip(per_row, tokens)) / total
    logs = [math.log(p) for p in per_row]
    _, stderr_nll = mean_and_stderr(logs)
    score = math.exp(mean_nll)
    predictions = [{"key": key, "perplexity": p, "tokens": t} for key, p, t in zip(keys, per_row, tokens)]
    return TaskResult(dataset, "perplexity", score, score * stderr_nll, len(encoded), predictions)
