"""Where the answers come from: a local model on the batched engine, or any OpenAI-compatible endpoint (a
`wb deploy` server, vLLM, a hosted API). Both return, in row order, the assistant's answer text, reasoning split
off (by the template's parser; for an endpoint, by its reasoning parser, else here)."""
from __future__ import annotations

import http.client
import json
import queue
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Iterator

from ..errors import UserError


@dataclass
class Generation:
    max_new_tokens: int = 512
    temperature: float = 0.0
    seed: int = 42
    enable_thinking: bool | None = None

    def template_kwargs(self) -> dict:
        return {} if self.enable_thinking is None else {"enable_thinking": self.enable_thinking}


class LocalBackend:
    """A model in this process: every prompt is submitted to the engine at once, which batches up to its
    max_batch_size of them together (continuous batching); answers are yielded in row order."""

    def __init__(self, engine, label: str, identity: dict):
        self.engine, self.label, self.identity = engine, label, identity

    def answers(self, prompts: list[tuple[list[dict], list | None]], gen: Generation) -> Iterator[str]:
        from ..infer import SamplingParams, vision

        template = self.engine.template
        params = SamplingParams(max_new_tokens=gen.max_new_tokens, temperature=gen.temperature, seed=gen.seed)
        opts = gen.template_kwargs()
        encoded = [vision.encode_prompt(template, messages, tools, **opts) for messages, tools in prompts]
        requests = [self.engine.submit(ids, params, images=vision.pixels(template, sources))
                    for ids, sources in encoded]
        for request, (ids, _) in zip(requests, encoded):
            done = request.result()[0]
            yield template.read_answer(ids, done.text, done.finish_reason)["content"]


RETRIES = 4           # a busy endpoint (429, 5xx) or a dropped connection is asked again, after 1, 2, 4, 8 s
RETRY_SECONDS = 1.0
_TRANSIENT = (429, 500, 502, 503, 504)
_REASONING = re.compile(r"<think>.*?</think>", re.DOTALL)


def without_reasoning(content: str) -> str:
    """The answer in a `content` that still holds the reasoning (a server without a reasoning parser): think
    blocks removed, and what precedes a lone </think> (the template opened the block in the prompt)."""
    if "</think>" not in content:
        return content  # as the server sent it (as the local backend's, unstripped)
    return _REASONING.sub("", content).rsplit("</think>", 1)[-1].lstrip()


class ApiBackend:
    """An OpenAI-compatible endpoint: POST {url}/chat/completions, up to `concurrency` requests in flight."""

    def __init__(self, url: str, api_key: str | None, model: str | None, concurrency: int, timeout: float = 600):
        self.url, self.api_key, self.concurrency, self.timeout = url.rstrip("/"), api_key, concurrency, timeout
        self._reached = False  # an endpoint that never answered is not retried (a wrong --api_url says so at once)
        self.model = model or self._first_model()
        self.label, self.identity = self.model, {"api_url": self.url, "api_model": self.model}

    def _call(self, path: str, body: dict | None = None) -> dict:
        url = self.url + path
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
        for attempt in range(RETRIES + 1):
            last = attempt == RETRIES
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                break
            except urllib.error.HTTPError as e:
                detail = _error_message(e.read())
                if e.code == 401:
                    raise UserError(f"{url}: the endpoint refuses the API key (HTTP 401{detail}); give --api_key") \
                        from None
                if e.code not in _TRANSIENT or last:
                    raise UserError(f"{url}: HTTP {e.code}{detail}"
                                    f"{f' (after {RETRIES} retries)' if last else ''}") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # (a reply cut short, too)
                reason = getattr(e, "reason", e)
                # not retried: an endpoint never reached (a wrong --api_url), or one silent for the whole timeout
                if last or isinstance(reason, TimeoutError) or (isinstance(e, urllib.error.URLError)
                                                                and not self._reached):
                    raise UserError(f"{url} does not answer ({type(reason).__name__ if not str(reason) else reason})"
                                    ) from None
            time.sleep(RETRY_SECONDS * 2 ** attempt)
        self._reached = True
        try:
            return json.loads(raw)
        except ValueError:
            raise UserError(f"{url}: malformed JSON in the response ({raw[:80]!r})") from None

    def _first_model(self) -> str:
        reply = self._call("/models")
        try:
            names = [entry["id"] for entry in reply["data"]]
        except (KeyError, TypeError):
            names = []
        if len(names) != 1:  # several: a wb deploy with adapters lists the base first, rarely the one meant
            listed = f"lists {len(names)} models ({', '.join(map(str, names))})" if names else "lists no model"
            raise UserError(f"{self.url}/models {listed}; give --api_model NAME") from None
        return names[0]

    def _answer(self, messages: list[dict], tools: list | None, gen: Generation) -> str:
        body = {"model": self.model, "messages": messages, "max_tokens": gen.max_new_tokens,
                "temperature": gen.temperature, "seed": gen.seed}
        if tools:
            body["tools"] = tools
        if gen.enable_thinking is not None:
            body["chat_template_kwargs"] = gen.template_kwargs()
        reply = self._call("/chat/completions", body)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise UserError(f"{self.url}/chat/completions: malformed reply (no choices[0].message)") from None
        return without_reasoning(content or "")

    def answers(self, prompts: list[tuple[list[dict], list | None]], gen: Generation) -> Iterator[str]:
        """In row order, `concurrency` requests in flight. The workers are daemon threads: an interrupted run
        (Ctrl-C) exits without waiting for the requests still out (each may take minutes)."""
        work, results = queue.Queue(), [None] * len(prompts)
        done = [threading.Event() for _ in prompts]
        for i in range(len(prompts)):
            work.put(i)

        def worker():
            while True:
                try:
                    i = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    results[i] = (True, self._answer(*prompts[i], gen))
                except BaseException as e:  # noqa: BLE001  (handed to the reader)
                    results[i] = (False, e)
                done[i].set()

        for _ in range(min(self.concurrency, len(prompts))):
            threading.Thread(target=worker, daemon=True).start()
        try:
            for i in range(len(prompts)):
                done[i].wait()
                ok, value = results[i]
                if not ok:
                    raise value
                yield value
        finally:  # nothing more is sent
            while not work.empty():
                try:
                    work.get_nowait()
                except queue.Empty:
                    break


def _error_message(body: bytes) -> str:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""
    return f": {message}"
