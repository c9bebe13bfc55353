"""What a caller asks of an engine (SamplingParams) and what it gets back (Completion, Delta).

No torch here: the CLI and the server validate requests before any model is loaded.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import UserError

FINISH_REASONS = ("stop", "length", "abort")
ANY_JSON_OBJECT = '{"type": "object"}'  # OpenAI's response_format json_object: any JSON object


class SchemaError(UserError):
    """A JSON schema (SamplingParams.json_schema) that cannot constrain the output."""


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 512
    temperature: float = 0.0          # 0: greedy
    top_p: float = 1.0
    top_k: int = 0                    # 0: off
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0     # OpenAI's: subtracted from the logit of every token already generated,
    frequency_penalty: float = 0.0    # and this times its count (both in [-2, 2]; the prompt does not count)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit in [-100, 100]) pairs
    stop: tuple[str, ...] = ()        # stop strings (not included in the output)
    seed: int | None = None
    n: int = 1                        # completions per prompt
    logprobs: bool = False
    top_logprobs: int = 0
    json_schema: str | None = None    # the output is JSON of this schema (a JSON object as text): infer/grammar.py
    grammar: str | None = None        # or matches this Lark grammar (llguidance's dialect): forced tool calls

    def __post_init__(self):
        if isinstance(self.logit_bias, dict):  # {token id: bias}, as the OpenAI API writes it
            object.__setattr__(self, "logit_bias", tuple(self.logit_bias.items()))
        if isinstance(self.stop, str):  # a single string given where a tuple is expected
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def constrained(self) -> bool:
        return self.json_schema is not None or self.grammar is not None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def validate(self) -> "SamplingParams":
        """Raise UserError (one line) for values no backend can honour."""
        checks = [
            (self.max_new_tokens >= 1, f"max_new_tokens must be at least 1, got {self.max_new_tokens}"),
            (self.temperature >= 0, f"temperature must be >= 0 (0 is greedy), got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 is off), got {self.top_k}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be positive (1 is none), got "
                                          f"{self.repetition_penalty}"),
            (self.n >= 1, f"n (completions per prompt) must be at least 1, got {self.n}"),
            (0 <= self.top_logprobs <= 20, f"top_logprobs must be between 0 and 20, got {self.top_logprobs}"),
            (-2 <= self.presence_penalty <= 2, f"presence_penalty must be in [-2, 2], got {self.presence_penalty}"),
            (-2 <= self.frequency_penalty <= 2, f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}"),
            (all(isinstance(t, int) and t >= 0 and -100 <= b <= 100 for t, b in self.logit_bias),
             "logit_bias maps token ids (0 or more) to biases in [-100, 100]"),
            (all(isinstance(s, str) and s for s in self.stop), f"stop strings must be non-empty strings, got "
                                                               f"{list(self.stop)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        if self.json_schema is not None and self.grammar is not None:
            raise SchemaError("an answer is constrained to a JSON schema or to a grammar (a forced tool call), "
                              "not both")
        if self.json_schema is not None:
            try:
                schema = json.loads(self.json_schema)
            except (TypeError, ValueError) as error:
                raise SchemaError(f"the JSON schema is not valid JSON: {error}") from None
            if not isinstance(schema, dict):
                raise SchemaError(f"a JSON schema is a JSON object, got {type(schema).__name__}")
            if not isinstance(schema.get("x-guidance", {}), (dict, type(None))):
                raise SchemaError("a JSON schema's x-guidance must be an object of llguidance options")
        return self


@dataclass
class Completion:
    token_ids: list[int]              # generated ids, without the stop token
    text: str                         # decoded; cut before a stop string
    finish_reason: str                # "stop" | "length" | "abort"
    # per token {"token_id", "token", "logprob", "top": [{"token_id", "token", "logprob"}, ...]}
    logprobs: list[dict] | None = None


@dataclass
class Delta:
    index: int                        # which of the n completions
    token_ids: list[int]
    text: str                         # new since the last delta, only what is safe to show
    logprobs: list[dict] | None = None
    finish_reason: str | None = None  # set on the last delta of that completion
