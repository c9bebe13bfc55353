"""Final answers of math completions, and whether two answers are the same number."""
from __future__ import annotations

import re
from fractions import Fraction

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?%?|-?\.\d+%?")
_HASHES = re.compile(r"####\s*([^\n]+)")


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def extract_answer(text: str) -> str | None:
    """The final answer: the last \\boxed{}, else what follows the last `####`, else the last number."""
    boxed = _boxed(text)
    if boxed is not None:
        return boxed
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def to_number(text: str) -> Fraction | None:
    """A number written as 1,234 / -3.5 / 3/4 / $12 / \\$12 / 50% / \\frac{3}{4} / 18 \\text{ dollars} / 18 dollars
    (exact; a percentage as the fraction it is), else None."""
    values = _values(text)
    return values[0] if values else None


def _values(text: str) -> tuple[Fraction, ...]:
    """The values an answer can mean: a percentage is both the fraction (60% = 0.6) and the number of percent
    (GSM8K's "what percentage" references are the bare 60)."""
    t = re.sub(r"\\(?:text|mbox|mathrm)\{[^{}]*\}", "", text)  # units written in LaTeX
    t = t.strip().rstrip(".").replace("\\$", "").replace("$", "").replace("\\!", "").replace("\\,", "")
    t = re.sub(r"\\[dt]?frac\{(-?\d+)\}\{(\d+)\}", r"\1/\2", t)
    t = t.removeprefix("\\(").removesuffix("\\)").strip()
    unit = re.fullmatch(r"(\S+)\s+[A-Za-z][A-Za-z ]*", t)  # 18 dollars
    t = (unit.group(1) if unit else t).replace(" ", "")
    percent = t.endswith("%")
    t = t.removesuffix("\\%").removesuffix("%")
    if not re.fullmatch(r"-?(\d[\d,]*(\.\d+)?|\.\d+)(/\d+)?", t):
        return ()
    try:
        value = Fraction(t.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return ()
    return (value / 100, value) if percent else (value,)


def same_answer(predicted: str | None, reference: str) -> bool:
    """Numeric equivalence where both sides are numbers, else equal after normalising case and spaces. The
    reference's final answer is its last \\boxed{} or `####` part; a reference that is neither nor a number is
    also read for its last number, as a prediction is ("She has 18 apples left." -> 18)."""
    if predicted is None:
        return False
    if _values(reference):
        candidates = [reference]
    elif "####" in reference or "\\boxed" in reference:
        candidates = [extract_answer(reference)]
    else:
        candidates = [reference, extract_answer(reference)]
    norm = lambda s: re.sub(r"\s+", " ", s.strip().strip(".").lower())  # noqa: E731
    mine = set(_values(predicted))
    for ref in filter(None, candidates):
        theirs = _values(ref)
        if mine and theirs:
            if mine & set(theirs):
                return True
        elif norm(predicted) == norm(ref):
            return True
    return False
