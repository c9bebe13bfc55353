"""The engine interface every backend implements, and the handle of one submitted prompt.

An engine runs its loop in a background thread; a Request is where that thread leaves deltas and finished
completions, and where callers read them: by iterating (threads), `async for` (asyncio, the server),
`result()` (blocking) or a done-callback. Everything here is thread-safe.
"""
from __future__ import annotations

import asyncio
import threading
from typing import AsyncIterator, Callable, Iterator

from .params import Completion, Delta, SamplingParams


class Request:
    """One submitted prompt and its `params.n` completions."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, adapter: str | None = None,
                 on_cancel: Callable[["Request"], None] | None = None, images: dict | None = None):
        self.prompt_ids, self.params, self.adapter = list(prompt_ids), params, adapter
        self.images = images  # pixel_values and image_grid_thw of a vision-language prompt's images
        self._on_cancel = on_cancel
        self._cond = threading.Condition()
        self._deltas: list[Delta] = []
        self._completions: list[Completion | None] = [None] * params.n
        self._left = params.n
        self._error: BaseException | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._callbacks: list[Callable[["Request"], None]] = []
        self.cancelled = False

    # -- the engine's side ---------------------------------------------------------------------------
    def push(self, delta: Delta, completion: Completion | None = None) -> None:
        """A delta; with `completion`, the last one of completion `delta.index`."""
        with self._cond:
            if self.done:
                return
            self._deltas.append(delta)
            if completion is not None:
                self._completions[delta.index] = completion
                self._left -= 1
            self._wake()
            callbacks = list(self._callbacks) if self.done else []
        for callback in callbacks:  # in the engine thread: one that raises must not stop the others or the engine
            try:
                callback(self)
            except Exception as e:  # noqa: BLE001
                import sys

                print(f"[wb] a request's done-callback raised {type(e).__name__}: {e}", file=sys.stderr)

    def fail(self, error: BaseException) -> None:
        """The engine could not serve this request: readers raise `error`."""
        with self._cond:
            if self.done:
                return
            self._error = error
            self._wake()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback(self)

    def _wake(self) -> None:
        self._cond.notify_all()
        for loop, future in self._waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # that event loop is closed: nobody waits there any more
                pass
        self._waiters.clear()

    # -- the caller's side ---------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._left == 0 or self._error is not None

    def __iter__(self) -> Iterator[Delta]:
        seen = 0
        while True:
            with self._cond:
                while seen == len(self._deltas) and not self.done:
                    self._cond.wait()
                new, seen = self._deltas[seen:], len(self._deltas)
                error = self._error if not new else None
                finished = self.done and not new
            if error is not None:
                raise error
            if finished:
                return
            yield from new

    async def __aiter__(self) -> AsyncIterator[Delta]:
        loop = asyncio.get_running_loop()
        seen = 0
        while True:
            future = None
            with self._cond:
                new, seen = self._deltas[seen:], len(self._deltas)
                error = self._error if not new else None
                finished = self.done and not new
                if not new and not self.done:
                    future = loop.create_future()
                    self._waiters.append((loop, future))
            if error is not None:
                raise error
            if finished:
                return
            if future is not None:
                await future
            for delta in new:
                yield delta

    def result(self, timeout: float | None = None) -> list[Completion]:
        """The n completions, once all are finished (TimeoutError after `timeout` seconds)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.done, timeout):
                raise TimeoutError(f"generation not finished after {timeout} s")
            if self._error is not None:
                raise self._error
            return list(self._completions)

    def add_done_callback(self, callback: Callable[["Request"], None]) -> None:
        """Call `callback(request)` once every completion is finished (at once if they are); it runs in the
        engine's thread, so it should be quick."""
        with self._cond:
            if not self.done:
                self._callbacks.append(callback)
                return
        callback(self)

    def cancel(self) -> None:
        """Stop generating (the client went away): unfinished completions end with finish_reason "abort"
        and the request's slots in the running batch are freed."""
        with self._cond:
            if self.done or self.cancelled:
                return
            self.cancelled = True
        if self._on_cancel is not None:
            self._on_cancel(self)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class Engine:
    """What every backend offers. `model_names`: "base" plus one name per LoRA adapter; `adapter=None` in
    `submit` means `default_model` (the adapter a checkpoint was loaded with, else the base)."""

    name: str = "engine"
    tokenizer = None
    template = None
    model_names: list[str] = ["base"]
    default_model: str = "base"

    def submit(self, prompt_ids: list[int], params: SamplingParams, adapter: str | None = None,
               images: dict | None = None) -> Request:
        """Start generating; `images`: the pixels of a vision-language prompt's images (infer/vision.py)."""
        raise NotImplementedError

    def generate(self, prompts: list[list[int]], params: SamplingParams, adapter: str | None = None,
                 images: list[dict | None] | None = None) -> list[list[Completion]]:
        """n completions per prompt; the prompts run batched together. Blocks until all are finished."""
        images = images or [None] * len(prompts)
        requests = [self.submit(p, params, adapter, images=i) for p, i in zip(prompts, images)]
        try:
            return [r.result() for r in requests]
        except BaseException:
            for r in requests:
                r.cancel()
            raise

    def close(self) -> None:
        """Abort what is running and stop the engine's thread."""

    @property
    def stop_token_ids(self) -> list[int]:
        """The template's end-of-turn tokens, else the tokenizer's end of sequence."""
        ids = list(getattr(self.template, "stop_token_ids", None) or [])
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return ids or ([eos] if eos is not None else [])

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
