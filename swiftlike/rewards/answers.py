"""Final answers of math completions, and whether two answers are the same number."""
from __future__ import annotations

import re
from fractions import Fraction

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
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
    """A number written as 1,234 / -3.5 / 3/4 / $12 / 50% / \\frac{3}{4} (exact), else None."""
    t = text.strip().rstrip(".").replace("$", "").replace("\\!", "").replace(" ", "")
    t = re.sub(r"\\[dt]?frac\{(-?\d+)\}\{(\d+)\}", r"\1/\2", t)
    t = t.removeprefix("\\(").removesuffix("\\)")
    percent = t.endswith("%") or t.endswith("\\%")
    t = t.removesuffix("\\%").removesuffix("%")
    if not re.fullmatch(r"-?(\d[\d,]*(\.\d+)?|\.\d+)(/\d+)?", t):
        return None
    try:
        value = Fraction(t.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None
    return value / 100 if percent else value


def same_answer(predicted: str | None, reference: str) -> bool:
    """Numeric equivalence where both sides are numbers, else equal after normalising case and spaces."""
    if predicted is None:
        return False
    ref = extract_answer(reference) if ("####" in reference or "\\boxed" in reference) else reference
    if ref is None:
        return False
    a, b = to_number(predicted), to_number(ref)
    if a is not None and b is not None:
        return a == b
    norm = lambda s: re.sub(r"\s+", " ", s.strip().strip(".").lower())  # noqa: E731
    return norm(predicted) == norm(ref)
