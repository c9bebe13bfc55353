"""Built-in reward functions. Each factory takes the run's RewardContext and returns
fn(completions, **columns) -> list of floats (None: this function cannot score that completion)."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .answers import extract_answer, same_answer


@dataclass
class RewardContext:
    """What built-in rewards may read from the run: its template and options."""

    template: Any = None
    max_completion_length: int = 256
    format_pattern: str = r"^\s*<think>.*?</think>\s*\S.*$"
    soft_cache_length: int = 0           # `length`: penalty ramps over the last N tokens before the limit
    cosine_max_len: int | None = None
    cosine_correct: tuple[float, float] = (1.0, 0.5)   # (at length 0, at cosine_max_len)
    cosine_wrong: tuple[float, float] = (-0.5, 0.0)
    repetition_ngram: int = 3
    repetition_max_penalty: float = -1.0
    extra: dict = field(default_factory=dict)


def _solutions(columns: dict, name: str) -> list:
    if "solution" not in columns:
        from ..errors import UserError

        raise UserError(f"the {name} reward compares with a `solution` column, which the dataset does not have "
                        f"(its columns: {', '.join(sorted(columns)) or 'none'}); rename one with --columns")
    return columns["solution"]


def accuracy(ctx: RewardContext) -> Callable:
    """1 when the completion's final answer (\\boxed{}, `#### n` or the last number) equals the `solution`
    column's (numerically where both are numbers), else 0."""
    def accuracy(completions, solution=None, **columns):
        refs = _solutions({"solution": solution} if solution is not None else columns, "accuracy")
        return [None if r is None else float(same_answer(extract_answer(_answer_part(c)), str(r)))
                for c, r in zip(completions, refs)]  # (a row without a solution: cannot judge)
    return accuracy


def _answer_part(text: str) -> str:
    """The text after the reasoning block, where there is one."""
    return text.rsplit("</think>", 1)[-1]


def format_reward(ctx: RewardContext) -> Callable:
    """1 when the completion matches --format_pattern (default: a <think>...</think> block, then an answer)."""
    pattern = re.compile(ctx.format_pattern, re.S)

    def format(completions, **_):
        # the whole completion (but for trailing whitespace, which `$` let through as well)
        return [1.0 if pattern.fullmatch(c) or pattern.fullmatch(c.rstrip()) else 0.0 for c in completions]
    return format


def length(ctx: RewardContext) -> Callable:
    """DAPO's soft overlong penalty: 0 up to max_completion_length - soft_cache_length tokens, then falling
    linearly to -1 at the limit (completions cut at the limit get -1)."""
    limit, cache = ctx.max_completion_length, ctx.soft_cache_length or max(1, ctx.max_completion_length // 4)

    def length(completions, completion_ids, **_):
        out = []
        for ids in completion_ids:
            n = len(ids)
            out.append(0.0 if n <= limit - cache else max(-1.0, (limit - cache - n) / cache))
        return out
    return length


def cosine(ctx: RewardContext) -> Callable:
    """Length-shaped correctness (Yeo et al. 2025): correct answers earn more when short, wrong answers are
    penalised less when long; a cosine schedule between the two ends of each range."""
    max_len = ctx.cosine_max_len or ctx.max_completion_length

    def cosine(completions, completion_ids, solution=None, **columns):
        refs = _solutions({"solution": solution} if solution is not None else columns, "cosine")
        out = []
        for text, ids, ref in zip(completions, completion_ids, refs):
            if ref is None:  # (a row without a solution: cannot judge)
                out.append(None)
                continue
            correct = same_answer(extract_answer(_answer_part(text)), str(ref))
            start, end = ctx.cosine_correct if correct else ctx.cosine_wrong
            progress = min(len(ids), max_len) / max_len
            out.append(end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress)))
        return out
    return cosine


def repetition(ctx: RewardContext) -> Callable:
    """Repeated word n-grams: max_penalty x (1 - distinct n-grams / n-grams); 0 for text without repeats."""
    n, worst = ctx.repetition_ngram, ctx.repetition_max_penalty

    def repetition(completions, **_):
        out = []
        for text in completions:
            words = text.lower().split()
            grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
            out.append(0.0 if not grams else (1.0 - len(set(grams)) / len(grams)) * worst)
        return out
    return repetition


def tool_call_valid(ctx: RewardContext) -> Callable:
    """1 when the template's tool-call parser finds at least one call whose arguments are a JSON object and,
    where the row lists `tools`, whose function is one of them; else 0."""
    fmt = ctx.template.spec.options.get("tool_format") if ctx.template is not None else None
    if fmt is None:
        from ..errors import UserError

        name = ctx.template.name if ctx.template is not None else "this"
        raise UserError(f"the tool_call_valid reward needs a template with a tool-call format; {name} has none")
    from ..templates.toolcalls import parse_tool_calls

    def tool_call_valid(completions, tools=None, **_):
        out = []
        for i, text in enumerate(completions):
            _, calls = parse_tool_calls(_answer_part(text), fmt)
            allowed = _tool_names(tools[i]) if tools is not None else None
            ok = bool(calls) and all(isinstance(c["function"]["arguments"], dict) and
                                     (allowed is None or c["function"]["name"] in allowed) for c in calls)
            out.append(1.0 if ok else 0.0)
        return out
    return tool_call_valid


def _tool_names(tools) -> set[str] | None:
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            return None
    if not isinstance(tools, list):
        return None
    return {(t.get("function") or t).get("name") for t in tools if isinstance(t, dict)}


BUILTINS: dict[str, Callable[[RewardContext], Callable]] = {
    "accuracy": accuracy, "format": format_reward, "length": length, "cosine": cosine,
    "repetition": repetition, "tool_call_valid": tool_call_valid,
}
