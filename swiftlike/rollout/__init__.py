"""Generation backends for GRPO behind one interface:

    generate(prompt_ids, n, sampling) -> n completions per prompt, group after group (token ids, each cut
                                         after its first stop token, which is kept)
    sync_weights(model)               -> make the backend sample from the policy's current weights

`transformers` runs the policy itself (any device); `vllm` runs a vLLM engine in the training process;
`server` calls a `wb rollout` server over HTTP.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Sampling:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0            # 0: no top-k filtering
    repetition_penalty: float = 1.0
    stop_token_ids: tuple = ()
    seed: int | None = None

    def to_json(self) -> dict:
        return {**asdict(self), "stop_token_ids": list(self.stop_token_ids)}


def cut_at_stop(ids: list[int], stops: set[int], limit: int) -> list[int]:
    """Tokens up to and including the first stop token (and at most `limit`)."""
    for i, t in enumerate(ids[:limit]):
        if t in stops:
            return list(ids[:i + 1])
    return list(ids[:limit])


__all__ = ["Sampling", "cut_at_stop"]
