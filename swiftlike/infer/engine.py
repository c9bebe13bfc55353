"""The transformers backend: continuous batching over a model (optionally with several LoRA adapters).

A background thread runs the loop. Each step it
1. admits waiting completions into free slots of the running batch (prefilled together, then joined to the
   batch's KV cache: batch.py),
2. picks one token for every row: greedy rows by argmax, sampling rows from their own seeded generator
   (sampling.py, shared with GRPO's rollout), requests with different settings side by side,
3. hands each row's token to its request as a Delta; rows that hit a stop token, a stop string, their token
   budget or a cancel leave the batch at once, freeing their slot,
4. runs one decode step for the rows left.
Requests for different LoRA adapters share a batch: PEFT's `adapter_names` routes each row through its own
adapter ("__base__": none).
"""
from __future__ import annotations

import collections
import random
import sys
import threading
from dataclasses import dataclass, field

import torch

from ..data.images import cat_images
from ..errors import UserError, intact
from .batch import RunningBatch
from .decode import ModelCall
from .grammar import Grammars, follow
from .params import Completion, Delta, SamplingParams
from .request import Engine, Request
from .sampling import draw, openai_penalties, penalize_repeats, probabilities
from .text import TextStream, token_piece

BASE = "base"
PEFT_BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass
class _Row:
    """One completion in flight."""

    request: Request
    index: int
    adapter: str                 # PEFT adapter name, or PEFT_BASE
    generator: torch.Generator
    stream: TextStream
    ids: list = field(default_factory=list)
    logprobs: list | None = None
    matcher: object | None = None  # the JSON schema's matcher (infer/grammar.py) of a constrained completion

    @property
    def params(self) -> SamplingParams:
        return self.request.params


class TransformersEngine(Engine):
    """Continuous batching with transformers models on any device. `max_batch_size`: completions decoded
    together; `adapters`: {name: LoRA checkpoint directory} to load beside what the model already holds."""

    name = "transformers"

    def __init__(self, model, tokenizer, template, max_batch_size: int = 32, adapters: dict | None = None,
                 default_model: str | None = None):
        if max_batch_size < 1:
            raise UserError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.model, self.tokenizer, self.template = model.eval(), tokenizer, template
        self.max_batch_size = max_batch_size
        self._thread: threading.Thread | None = None
        self.adapters: dict[str, str] = {}       # served name -> PEFT adapter name
        for peft_name in getattr(model, "peft_config", {}) or {}:
            self.adapters[peft_name] = peft_name
        for name, path in (adapters or {}).items():
            self.load_adapter(name, path)
        self.default_model = default_model or next(iter(self.adapters), BASE)
        self.device = next(self.model.parameters()).device
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._pad = pad if pad is not None else 0
        self._stops = set(self.stop_token_ids)
        config = getattr(self.model, "config", None)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.max_model_len = getattr(text_config, "max_position_embeddings", None)
        self._cond = threading.Condition()
        self._waiting: collections.deque[_Row] = collections.deque()
        self._rows: list[_Row] = []
        self._batch = RunningBatch(ModelCall(self.model), self._pad, self.device)
        self._logits = None
        self._closed = False
        self._seeds = random.Random()
        self.refill = max(1, max_batch_size // 4)  # backlog: admit once this many slots are free (fewer prefills)
        self.vocab_size = getattr(text_config, "vocab_size", None) or len(tokenizer)  # the logits' width
        self._grammars = Grammars(tokenizer, self.vocab_size, self.stop_token_ids)

    # -- models ------------------------------------------------------------------------------------
    @property
    def model_names(self) -> list[str]:
        return [BASE, *self.adapters]

    def load_adapter(self, name: str, path: str) -> None:
        """Serve the LoRA adapter in `path` under `name` (before the first request)."""
        from peft import PeftModel

        if name in self.model_names:
            raise UserError(f"model name {name!r} is taken; give each adapter its own name")
        if self._thread is not None:
            raise UserError("load adapters before the first request")
        with intact(path):
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(path, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
        self.model.eval()
        self.adapters[name] = name
        if hasattr(self, "_batch"):
            self._batch = RunningBatch(ModelCall(self.model), self._pad, self.device)

    def _peft_name(self, adapter: str | None) -> str:
        name = self.default_model if adapter is None else adapter
        if name == BASE:
            return PEFT_BASE
        if name not in self.adapters:
            raise UserError(f"unknown model {name!r}; this engine serves {', '.join(self.model_names)}")
        return self.adapters[name]

    def _adapter_kwargs(self, names: list[str]) -> dict:
        """PEFT routes rows per adapter only when they differ from the active one."""
        if not self.adapters:
            return {}
        active = getattr(self.model, "active_adapter", None)
        if all(n == active for n in names):
            return {}
        return {"adapter_names": names}

    # -- requests ----------------------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams, adapter: str | None = None,
               images: dict | None = None) -> Request:
        params.validate()
        if not prompt_ids:
            raise UserError("the prompt is empty")
        biased = max((t for t, _ in params.logit_bias), default=-1)
        if biased >= self.vocab_size:
            raise UserError(f"logit_bias: token id {biased} is outside the vocabulary (size {self.vocab_size})")
        if images is not None and not self._batch.call.reads_images:
            raise UserError("this model reads no images; serve a vision-language model (e.g. Qwen2.5-VL, Qwen3-VL)")
        if self.max_model_len and len(prompt_ids) >= self.max_model_len:
            raise UserError(f"the prompt has {len(prompt_ids)} tokens; the model's context is "
                            f"{self.max_model_len}")
        peft_name = self._peft_name(adapter)
        matchers = self._grammars.matchers(params, params.n) if params.constrained else [None] * params.n
        request = Request(prompt_ids, params, adapter, on_cancel=self._cancel, images=images)
        rows = [_Row(request, i, peft_name, self._generator(params, i), TextStream(self.tokenizer, params.stop),
                     logprobs=[] if params.logprobs else None, matcher=matchers[i]) for i in range(params.n)]
        with self._cond:
            if self._closed:
                raise UserError("the engine is closed")
            self._waiting.extend(rows)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wb-engine", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return request

    def _generator(self, params: SamplingParams, index: int) -> torch.Generator:
        seed = params.seed + index if params.seed is not None else self._seeds.getrandbits(63)
        return torch.Generator().manual_seed(seed)

    def _cancel(self, request: Request) -> None:
        with self._cond:
            waiting = [r for r in self._waiting if r.request is request]
            for row in waiting:
                self._waiting.remove(row)
            self._cond.notify_all()
        for row in waiting:  # never started: nothing generated
            self._finish(row, "abort")

    def stats(self) -> dict:
        """Completions running and waiting (for logs, the server's /health and tests)."""
        with self._cond:
            return {"running": len(self._rows), "waiting": len(self._waiting)}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._cond:
            left, self._waiting = list(self._waiting), collections.deque()
        for row in left + self._rows:
            self._finish(row, "abort")
        self._rows = []

    # -- the loop ----------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._rows:
                    self._cond.wait()
                if self._closed:
                    return
            try:
                with torch.inference_mode():
                    self._step()
            except Exception as error:  # the batch is lost: its requests fail, later ones start afresh
                self._fail_running(error)

    def _fail_running(self, error: Exception) -> None:
        self._fail(self._rows, error)
        self._rows, self._logits = [], None
        self._batch = RunningBatch(self._batch.call, self._pad, self.device)

    def _step(self) -> None:
        self._admit()
        if not self._rows:
            return
        tokens, entries = self._choose(self._logits)
        ends = [self._accept(row, tokens[i], entries[i]) for i, row in enumerate(self._rows)]
        keep = [i for i, end in enumerate(ends) if end is None]
        self._batch.keep(keep)
        with self._cond:
            self._rows = [self._rows[i] for i in keep]
        for end in ends:  # after the slots are free: a caller woken by a result finds them free
            if end is not None:
                self._finish(*end)
        if self._rows:
            step = torch.tensor([tokens[i] for i in keep], dtype=torch.long, device=self.device)
            self._logits = self._batch.decode(step, **self._adapter_kwargs([r.adapter for r in self._rows]))

    def _admit(self) -> None:
        free = self.max_batch_size - len(self._rows)
        with self._cond:
            backlog = len(self._waiting)
            if not backlog or free <= 0 or (self._rows and backlog > free and free < self.refill):
                return
            rows = [self._waiting.popleft() for _ in range(min(free, backlog))]
        for group in _prefill_groups(rows):
            try:
                self._prefill(group)
            except Exception as error:  # (out of memory on a long prompt): that group fails, the batch runs on
                self._fail(group, error)

    def _fail(self, rows: list[_Row], error: Exception) -> None:
        if not isinstance(error, UserError):
            print(f"[wb] generation failed: {type(error).__name__}: {error}", file=sys.stderr)
        for request in {id(row.request): row.request for row in rows}.values():
            request.fail(error)

    def _prefill(self, rows: list[_Row]) -> None:
        """Join `rows` to the running batch; when it raises, the batch is as it was (RunningBatch._join)."""
        prompts, unique, expand = [], {}, []
        for row in rows:  # the n completions of a request are prefilled once
            key = id(row.request)
            if key not in unique:
                unique[key] = len(prompts)
                prompts.append(row)
            expand.append(unique[key])
        images = [r.request.images for r in prompts if r.request.images is not None]
        logits = self._batch.prefill([r.request.prompt_ids for r in prompts], expand=expand,
                                     images=cat_images(images) if images else None,
                                     **self._adapter_kwargs([r.adapter for r in prompts]))
        self._logits = logits if not self._rows else torch.cat([self._logits, logits])
        self._rows += rows

    def _choose(self, logits: torch.Tensor) -> tuple[list[int], list[dict | None]]:
        """The next token of every row, and its log-probability entry where the request wants one."""
        rows = self._rows
        logits = logits.float()
        wants = [i for i, r in enumerate(rows) if r.params.logprobs]
        logp = torch.log_softmax(logits[wants], dim=-1) if wants else None  # of the model's own distribution
        for i, row in enumerate(rows):
            if row.params.repetition_penalty != 1.0:
                seen = torch.tensor([row.request.prompt_ids + row.ids], device=logits.device)
                logits[i:i + 1] = penalize_repeats(logits[i:i + 1], seen, row.params.repetition_penalty)
            openai_penalties(logits[i:i + 1], row.ids, row.params)
        constrained = [i for i, row in enumerate(rows) if row.matcher is not None]
        if constrained:
            self._grammars.constrain(logits, constrained, [rows[i].matcher for i in constrained])
        tokens = logits.argmax(dim=-1)
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(rows):
            if not row.params.greedy:
                groups.setdefault((row.params.temperature, row.params.top_k, row.params.top_p), []).append(i)
        for members in groups.values():
            uniform = torch.stack([torch.rand(1, generator=rows[i].generator) for i in members])
            tokens[members] = draw(probabilities(logits[members], rows[members[0]].params), uniform)
        tokens = tokens.tolist()
        entries: list[dict | None] = [None] * len(rows)
        for j, i in enumerate(wants):
            entries[i] = self._logprob_entry(logp[j], tokens[i], rows[i].params.top_logprobs)
        return tokens, entries

    def _logprob_entry(self, logp: torch.Tensor, token: int, top: int) -> dict:
        entry = {**self._piece(token), "logprob": float(logp[token]), "top": []}
        if top:
            values, ids = torch.topk(logp, top)
            entry["top"] = [{**self._piece(t), "logprob": v} for t, v in zip(ids.tolist(), values.tolist())]
        return entry

    def _piece(self, token: int) -> dict:
        text, raw = token_piece(self.tokenizer, token)
        return {"token_id": token, "token": text, "bytes": list(raw)}

    def _accept(self, row: _Row, token: int, entry: dict | None) -> tuple | None:
        """Give `token` to its row; when the row is finished, the arguments of its `_finish`."""
        if row.request.cancelled or row.request.done:  # (done: failed while its row ran, e.g. a sibling's prefill)
            return (row, "abort")
        if token in self._stops:
            return (row, "stop")
        row.ids.append(token)
        if entry is not None:
            row.logprobs.append(entry)
        text = row.stream.push(token)
        full = self.max_model_len and len(row.request.prompt_ids) + len(row.ids) >= self.max_model_len
        try:
            complete = row.matcher is not None and follow(row.matcher, token)  # whole: only a stop could follow
        except RuntimeError as error:  # (never expected): this request fails, the batch runs on
            row.request.fail(error)
            return (row, "abort")
        if row.stream.stopped or complete or len(row.ids) >= row.params.max_new_tokens or full:
            return (row, "stop" if row.stream.stopped or complete else "length", [token], text,
                    [entry] if entry is not None else None)
        row.request.push(Delta(row.index, [token], text, [entry] if entry is not None else None))
        return None

    def _finish(self, row: _Row, reason: str, tokens: list[int] | None = None, text: str = "",
                logprobs: list | None = None) -> None:
        text += row.stream.finish()
        completion = Completion(list(row.ids), row.stream.text, reason, row.logprobs)
        delta = Delta(row.index, tokens or [], text, logprobs if row.logprobs is not None else None, reason)
        row.request.push(delta, completion)


PAD_SLACK = 1.25  # at most 25% padding in a prefill batch: long-tailed prompts are not padded to the longest


def _prefill_groups(rows: list[_Row]) -> list[list[_Row]]:
    """Rows to admit, grouped into prefill batches of similar prompt lengths (a request's rows together)."""
    requests: dict[int, list[_Row]] = {}
    for row in rows:
        requests.setdefault(id(row.request), []).append(row)
    ordered = sorted(requests.values(), key=lambda rs: len(rs[0].request.prompt_ids))
    groups, group, tokens = [], [], 0
    for rs in ordered:
        length = len(rs[0].request.prompt_ids)
        count = len({id(r.request) for r in group}) + 1
        if group and count * length > PAD_SLACK * (tokens + length):
            groups.append(group)
            group, tokens = [], 0
        group += rs
        tokens += length
    return groups + [group] if group else groups

