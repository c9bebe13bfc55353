"""vLLM in the training process (colocated): generation on the same GPU, the policy's weights loaded into
the engine after every update. Needs `pip install vllm` and a GPU."""
from __future__ import annotations

from . import Sampling, cut_at_stop
from ..errors import UserError


def vllm_sampling(sampling: Sampling, n: int):
    from vllm import SamplingParams

    return SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                          top_k=sampling.top_k if sampling.top_k > 0 else -1,
                          repetition_penalty=sampling.repetition_penalty, max_tokens=sampling.max_tokens,
                          stop_token_ids=list(sampling.stop_token_ids), seed=sampling.seed)


def completion_ids(outputs, sampling: Sampling) -> list[list[int]]:
    """vLLM request outputs -> completions cut after their stop token (kept, as the trainer learns it)."""
    stops = set(sampling.stop_token_ids)
    out = []
    for request in outputs:
        for c in request.outputs:
            ids = list(c.token_ids)
            if getattr(c, "finish_reason", None) == "stop" and isinstance(c.stop_reason, int) and \
                    (not ids or ids[-1] != c.stop_reason):
                ids.append(c.stop_reason)
            out.append(cut_at_stop(ids, stops, sampling.max_tokens))
    return out


class VLLMRollout:
    name = "vllm"

    def __init__(self, model_dir: str, dtype: str = "auto", gpu_memory_utilization: float = 0.3,
                 max_model_len: int | None = None, tensor_parallel_size: int = 1, seed: int = 0,
                 distributed: bool = False):
        try:
            from vllm import LLM
        except ImportError:
            raise UserError("the vllm backend needs vLLM: pip install vllm (GPU machines); or use the default "
                            "transformers backend") from None
        self.llm = LLM(model=model_dir, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size, seed=seed,
                       enable_prefix_caching=True,
                       distributed_executor_backend="external_launcher" if distributed else None)

    def _engine_model(self):
        return self.llm.llm_engine.model_executor.driver_worker.model_runner.model

    def load_weights(self, weights) -> int:
        count = 0
        model = self._engine_model()
        for name, tensor in weights:
            model.load_weights([(name, tensor)])
            count += 1
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
        return count

    def sync_weights(self, model) -> None:
        from .weights import policy_weights

        self.load_weights(policy_weights(model))

    def generate(self, prompts: list[list[int]], n: int, sampling: Sampling) -> list[list[int]]:
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], vllm_sampling(sampling, n),
                                    use_tqdm=False)
        return completion_ids(outputs, sampling)
