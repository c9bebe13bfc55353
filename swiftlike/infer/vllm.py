"""The vLLM backend (`--infer_backend vllm`, GPU, `pip install vllm`), behind the same interface as the
transformers engine.

vLLM's AsyncLLMEngine runs in an asyncio loop of its own thread; `submit` schedules one coroutine per
request there, which turns vLLM's cumulative outputs into our Deltas. LoRA checkpoints are served natively
(one LoRARequest each, with ids from 1); the template's stop tokens are passed as `stop_token_ids`, so a
chat model stops at its end-of-turn token whatever its generation_config says.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import threading
from pathlib import Path

from ..errors import UserError
from .grammar import check_json_schema
from .params import Completion, Delta, SamplingParams, SchemaError
from .request import Engine, Request

BASE = "base"


def require_vllm():
    try:
        import vllm
    except ImportError:
        raise UserError("--infer_backend vllm needs vLLM: pip install vllm (on a GPU machine); or use the default "
                        "--infer_backend transformers") from None
    return vllm


def vllm_sampling(params: SamplingParams, stop_token_ids: list[int]):
    """Our SamplingParams as vLLM's: stop strings cut from the text, special tokens kept in it (tool-call
    markers), the stop tokens explicit."""
    if params.grammar is not None:
        raise SchemaError("a forced tool call (tool_choice \"required\" or a named function), or JSON after a "
                          "think block, needs --infer_backend transformers; vLLM's structured outputs take a JSON "
                          "schema here")
    from vllm import SamplingParams as VLLMSamplingParams

    logprobs = params.top_logprobs if params.logprobs else None  # vLLM returns the sampled token's too
    constraint = _json_constraint(params.json_schema) if params.json_schema is not None else {}
    return VLLMSamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                              top_k=params.top_k if params.top_k > 0 else -1,
                              repetition_penalty=params.repetition_penalty, presence_penalty=params.presence_penalty,
                              frequency_penalty=params.frequency_penalty,
                              logit_bias=dict(params.logit_bias) or None, max_tokens=params.max_new_tokens,
                              stop=list(params.stop), stop_token_ids=list(stop_token_ids), seed=params.seed,
                              logprobs=logprobs, include_stop_str_in_output=False, skip_special_tokens=False,
                              **constraint)


def _json_constraint(schema: str) -> dict:
    """vLLM's own structured decoding of a JSON schema: `structured_outputs` (vLLM 0.10.2 and later),
    `guided_decoding` before. (Its whitespace rules are the engine's: a request cannot ask for compact JSON.)"""
    import vllm.sampling_params as sp

    if hasattr(sp, "StructuredOutputsParams"):
        return {"structured_outputs": sp.StructuredOutputsParams(json=json.loads(schema))}
    return {"guided_decoding": sp.GuidedDecodingParams(json=json.loads(schema))}


def lora_requests(adapters: dict[str, str]) -> dict:
    """{name: LoRARequest}, integer ids from 1 in the given order (vLLM keys its adapter cache by id)."""
    from vllm.lora.request import LoRARequest

    return {name: LoRARequest(name, i, str(path)) for i, (name, path) in enumerate(adapters.items(), start=1)}


def max_lora_rank(adapters: dict[str, str]) -> int:
    """The largest LoRA rank among the adapters (vLLM sizes its LoRA buffers by it)."""
    ranks = [json.loads((Path(p) / "adapter_config.json").read_text(encoding="utf-8")).get("r", 8)
             for p in adapters.values()]
    return max(ranks, default=8)


def logprob_entries(token_ids: list[int], logprobs, top: int) -> list[dict]:
    """vLLM's per-position {token_id: Logprob(logprob, rank, decoded_token)} -> our entries."""
    out = []
    for token, candidates in zip(token_ids, logprobs or []):
        def entry(t, lp):
            return {"token_id": t, "token": lp.decoded_token or "", "logprob": lp.logprob}

        ranked = sorted(candidates.items(), key=lambda kv: kv[1].rank if kv[1].rank is not None else 1 << 30)
        chosen = candidates.get(token)
        out.append({**(entry(token, chosen) if chosen is not None else {"token_id": token, "token": "",
                                                                         "logprob": float("nan")}),
                    "top": [entry(t, lp) for t, lp in ranked[:top]]})
    return out


class _Progress:
    """What of one completion has been handed out already (vLLM reports cumulative outputs)."""

    def __init__(self):
        self.tokens, self.chars, self.done = 0, 0, False


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, model_dir: str, tokenizer, template, adapters: dict | None = None,
                 default_model: str | None = None, max_batch_size: int = 256, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None,
                 tensor_parallel_size: int = 1, seed: int = 0, trust_remote_code: bool = False,
                 hf_overrides: dict | None = None):
        vllm = require_vllm()
        self.tokenizer, self.template = tokenizer, template
        self.adapters = dict(adapters or {})
        self.model_names = [BASE, *self.adapters]
        self.default_model = default_model or next(iter(self.adapters), BASE)
        self.max_batch_size, self.max_model_len = max_batch_size, max_model_len
        self._loras = lora_requests(self.adapters) if self.adapters else {}
        args = vllm.AsyncEngineArgs(model=model_dir, tokenizer=model_dir, dtype=dtype, seed=seed,
                                    gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                                    tensor_parallel_size=tensor_parallel_size, max_num_seqs=max_batch_size,
                                    trust_remote_code=trust_remote_code, enable_lora=bool(self.adapters),
                                    max_loras=max(1, len(self.adapters)), max_lora_rank=max_lora_rank(self.adapters),
                                    **({"hf_overrides": hf_overrides} if hf_overrides else {}))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="wb-vllm", daemon=True)
        self._thread.start()
        self._ids = itertools.count()
        self._running: dict[Request, str] = {}

        async def start():
            return vllm.AsyncLLMEngine.from_engine_args(args)

        try:
            self._engine = asyncio.run_coroutine_threadsafe(start(), self._loop).result()
        except BaseException:  # no engine: its loop thread stops with it
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            raise

    def submit(self, prompt_ids: list[int], params: SamplingParams, adapter: str | None = None,
               images: dict | None = None) -> Request:
        params.validate()
        if not prompt_ids:
            raise UserError("the prompt is empty")
        if images is not None:
            raise UserError("prompts with images run on --infer_backend transformers (vLLM's image inputs are not "
                            "wired into swiftlike yet)")
        name = self.default_model if adapter is None else adapter
        if name not in self.model_names:
            raise UserError(f"unknown model {name!r}; this engine serves {', '.join(self.model_names)}")
        if params.json_schema is not None:
            check_json_schema(params.json_schema)
        sampling = vllm_sampling(params, self.stop_token_ids)  # (what vLLM cannot take is refused here)
        request = Request(prompt_ids, params, adapter, on_cancel=self._cancel)
        request_id = f"wb-{next(self._ids)}"
        self._running[request] = request_id
        asyncio.run_coroutine_threadsafe(self._serve(request, request_id, sampling, self._loras.get(name)),
                                         self._loop)
        return request

    async def _serve(self, request: Request, request_id: str, sampling, lora) -> None:
        progress = [_Progress() for _ in range(request.params.n)]
        try:
            if request.cancelled:  # before vLLM ever saw it
                raise asyncio.CancelledError
            async for output in self._engine.generate({"prompt_token_ids": request.prompt_ids}, sampling,
                                                      request_id, lora_request=lora):
                for choice in output.outputs:
                    self._relay(request, choice, progress[choice.index])
        except asyncio.CancelledError:
            pass
        except Exception as error:  # the engine failed this request
            request.fail(error)
        finally:
            self._running.pop(request, None)
        for index, p in enumerate(progress):  # aborted by vLLM without a last output
            if not p.done:
                request.push(Delta(index, [], "", None, "abort"), Completion([], "", "abort"))

    def _relay(self, request: Request, choice, progress: _Progress) -> None:
        """One cumulative vLLM CompletionOutput -> the Delta of what is new (and the Completion at the end)."""
        if progress.done:
            return
        ids, text = list(choice.token_ids), choice.text
        reason = choice.finish_reason
        if reason is not None:
            ids, text = self._without_stop_token(ids, text)
        params = request.params
        logprobs = logprob_entries(ids, choice.logprobs, params.top_logprobs) if params.logprobs else None
        new_logprobs = logprobs[progress.tokens:] if logprobs is not None else None
        delta = Delta(choice.index, ids[progress.tokens:], text[progress.chars:], new_logprobs, reason)
        progress.tokens, progress.chars = len(ids), max(progress.chars, len(text))
        if reason is None:
            request.push(delta)
            return
        progress.done = True
        request.push(delta, Completion(ids, text, reason if reason in ("stop", "length") else "abort", logprobs))

    def _without_stop_token(self, ids: list[int], text: str) -> tuple[list[int], str]:
        if ids and ids[-1] in self.stop_token_ids:
            piece = self.tokenizer.decode([ids[-1]], skip_special_tokens=False)
            ids = ids[:-1]
            if piece and text.endswith(piece):
                text = text[:-len(piece)]
        return ids, text

    def _cancel(self, request: Request) -> None:
        request_id = self._running.get(request)
        if request_id is not None:
            asyncio.run_coroutine_threadsafe(self._engine.abort(request_id), self._loop)

    def close(self) -> None:
        for request in list(self._running):
            request.cancel()
        shutdown = getattr(self._engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
