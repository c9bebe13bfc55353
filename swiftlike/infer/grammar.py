"""JSON-schema-constrained decoding for the transformers engine (OpenAI's `response_format`), with llguidance.

A constrained completion has a matcher that follows every token it is given. Before each pick the matcher's
bitmask of the tokens that can continue valid JSON of the schema sets every other logit to -inf, so greedy and
sampled picks alike only write such JSON, and the stop tokens are allowed only once the JSON is complete. The JSON
is written compact (no free whitespace between tokens): a model cannot spend its budget on blank space. A schema
is checked when the request arrives: one that llguidance cannot compile is the caller's error.
"""
from __future__ import annotations

import re
import threading

import torch

from .params import SchemaError


class Grammars:
    """Matchers for one tokenizer and the model's output width (`vocab_size`, which may differ from the
    tokenizer's); `stop_ids`: the tokens that end a completion, allowed once its output is complete."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: list[int]):
        self.hf_tokenizer, self.vocab_size, self.stop_ids = tokenizer, vocab_size, list(stop_ids)
        self._tokenizer = None  # built on the first constrained request (~1 s for a 150k vocabulary)
        self._bits = torch.arange(32, dtype=torch.int32)
        self._lock = threading.Lock()

    def _llg_tokenizer(self):
        with self._lock:  # (requests arrive on several threads; one builds it)
            if self._tokenizer is None:
                import llguidance.hf

                width = max(len(self.hf_tokenizer), self.vocab_size)  # (every id either side may name)
                self._tokenizer = llguidance.hf.from_tokenizer(self.hf_tokenizer, n_vocab=width,
                                                               eos_token=self.stop_ids)
            return self._tokenizer

    def matchers(self, params, count: int) -> list:
        """`count` fresh matchers (a request's n completions) of its SamplingParams' json_schema (checked to be a
        JSON object) or grammar; SchemaError when llguidance cannot compile it."""
        import llguidance

        if params.json_schema is not None:
            grammar, what = _compact_json(params.json_schema), "JSON schema"
        else:
            grammar, what = llguidance.LLMatcher.grammar_from_lark(params.grammar), "grammar"
        first = llguidance.LLMatcher(self._llg_tokenizer(), grammar)
        if first.is_error():
            raise SchemaError(f"the {what} cannot be enforced: {_reason(first.get_error())}")
        return [first] + [first.deep_copy() for _ in range(count - 1)]

    def constrain(self, logits: torch.Tensor, rows: list[int], matchers: list) -> None:
        """Set to -inf, in place, every logit of `rows` that its matcher does not allow next."""
        import llguidance.torch

        mask = llguidance.torch.allocate_token_bitmask(len(rows), self._llg_tokenizer().vocab_size)
        for j, matcher in enumerate(matchers):
            llguidance.torch.fill_next_token_bitmask(matcher, mask, j)
        mask, bits = mask.to(logits.device), self._bits.to(logits.device)  # (unpacked where the logits are)
        forbidden = ((mask.unsqueeze(-1) >> bits) & 1).flatten(1)[:, :logits.shape[-1]] == 0
        if len(rows) == len(logits):
            logits.masked_fill_(forbidden, float("-inf"))
        else:
            index = torch.tensor(rows, device=logits.device)
            logits[index] = logits[index].masked_fill(forbidden, float("-inf"))


def check_json_schema(schema: str) -> None:
    """SchemaError unless llguidance compiles `schema` (without a tokenizer: for the vLLM backend, which compiles
    it in its own engine, where a failure would reach the caller only as a failed generation)."""
    import llguidance

    error = llguidance.LLMatcher.validate_grammar(_compact_json(schema))
    if error:
        raise SchemaError(f"the JSON schema cannot be enforced: {_reason(error)}")


def json_after_reasoning(template, schema: str, think: str | None) -> str:
    """The grammar of a JSON answer of `schema` after the reasoning a prompt that did `think` allows
    (templates/call_grammar.json_grammar), the schema checked first so that its errors name it, not the grammar
    around it."""
    from ..templates.call_grammar import json_grammar

    check_json_schema(schema)
    return json_grammar(template, schema, think)


def _compact_json(schema: str) -> str:
    """llguidance's grammar of JSON of `schema`, without free whitespace (unless the schema's own x-guidance
    options say otherwise)."""
    import llguidance

    return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})


def _reason(error: str) -> str:
    """llguidance's compile error in one line, without its position in the generated grammar (which callers never
    see) or the grammar itself."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    first = re.sub(r"^at \d+\(\d+\): ", "", lines[0] if lines else "unknown error")
    if first.rstrip().endswith(":") and len(lines) > 1:  # ("regex parse error:" then the pattern and the error)
        first += " " + lines[-1]
    return first[:300]


def follow(matcher, token: int) -> bool:
    """Advance `matcher` by the chosen token; True when the output is complete and nothing may follow it."""
    if not matcher.consume_token(token):
        raise RuntimeError(f"the grammar refused token {token}: {matcher.get_error()}")
    return matcher.is_stopped()
