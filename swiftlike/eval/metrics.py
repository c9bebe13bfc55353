"""Scoring one prediction against its reference: what is extracted from the answer, and whether (or how much)
it matches. Every metric gives a row a score in [0, 1]; a task's score is their mean.

    math         the final answer (last \\boxed{}, else after ####, else the last number), numerically equal
    choice       the option letter the answer picks (ANSWER: B, "the answer is (B)", "option B.", a leading B.)
    exact_match  equal after SQuAD normalisation (case, punctuation, articles, spaces)
    f1           SQuAD token F1 of the normalised texts
    rouge        ROUGE-L F1 over lower-cased words
    perplexity   not a per-row score: exp of the mean NLL of the reference tokens (local models only)
"""
from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from ..rewards.answers import extract_answer, same_answer

LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Metric:
    name: str
    extract: Callable[[str], str | None]       # the part of the prediction that is scored
    score: Callable[[str | None, str], float]  # (extracted, reference) -> [0, 1]
    description: str
    binary: bool = False                       # a row is right or wrong (predictions also say `correct`)


def normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def token_f1(prediction: str | None, reference: str) -> float:
    pred, ref = normalize(prediction or "").split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str | None, reference: str) -> float:
    """ROUGE-L F1 (beta 1) of the longest common subsequence of lower-cased words."""
    pred, ref = (prediction or "").lower().split(), reference.lower().split()
    if not pred or not ref:
        return float(pred == ref)
    previous = [0] * (len(ref) + 1)
    for word in pred:
        current = [0]
        for j, other in enumerate(ref):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if not lcs:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


# An option letter: capital (B, **B**), or in any case when marked as one: (b), b), b. -- so that the words "a" and
# "I" are not read as options.
_LETTER = r"(?:\(([A-Ja-j])\)|\**([A-J])\**(?![\w'])|([a-j])[\).:](?!\w))"
_CHOICE_PATTERNS = [  # in order of authority; within one, the last match wins
    rf"(?i:\banswer)\s*(?:is|:)?\s*[:\-]?\s*(?:(?i:option|choice)\s*)?{_LETTER}",  # ANSWER: B / answer is (B)
    rf"(?i:\b(?:option|choice))\s+(?:is\s+)?{_LETTER}\s*(?=$|[.,;!])",            # the correct option is B.
    rf"(?:\bis|'s)\s+{_LETTER}\s*[.!]?\s*\Z",                                     # (at the end) it's B
    r"^\s*(?:\(([A-Ja-j])\)|([A-Ja-j])[\).:](?!\w)|\**([A-J])\**\s*$)",           # a line's B. / (B) / b) / B
    r"\(([A-J])\)",                                                               # (B) anywhere
]
_THINKING = re.compile(r"<think>.*?</think>", re.DOTALL)


def extract_choice(text: str) -> str | None:
    """The option letter an answer picks: the last explicit 'answer is X' wins, then a closing 'option X', then a
    leading letter; reasoning in <think> blocks is not read."""
    text = _THINKING.sub(" ", text)
    for pattern in _CHOICE_PATTERNS:
        found = re.findall(pattern, text, flags=re.MULTILINE)
        if found:
            last = found[-1]
            return next(g for g in (last if isinstance(last, tuple) else (last,)) if g).upper()
    return None


def choice_reference(reference: str) -> str:
    return extract_choice(reference) or reference.strip()[:1].upper()


METRICS = {m.name: m for m in [
    Metric("math", extract_answer, lambda got, ref: float(same_answer(got, ref)),
           "final answer (\\boxed{}, ####, else last number) numerically equal to the reference's", binary=True),
    Metric("choice", extract_choice, lambda got, ref: float(got is not None and got == choice_reference(ref)),
           "the option letter picked equals the reference letter", binary=True),
    Metric("exact_match", lambda text: text.strip(), lambda got, ref: float(normalize(got or "") == normalize(ref)),
           "equal after normalising case, punctuation, articles and spaces", binary=True),
    Metric("f1", lambda text: text.strip(), token_f1, "token F1 of the normalised texts (SQuAD)"),
    Metric("rouge", lambda text: text.strip(), rouge_l, "ROUGE-L F1 over lower-cased words"),
]}
