"""Where the answers come from: a local model on the batched engine, or any OpenAI-compatible endpoint (a
`wb deploy` server, vLLM, a hosted API). Both return, in row order, the assistant's answer text (reasoning split
off, as the server's `content` field carries it)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
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
        for request in requests:
            yield template.parse_response(request.result()[0].text)["content"]


class ApiBackend:
    """An OpenAI-compatible endpoint: POST {url}/chat/completions, up to `concurrency` requests in flight."""

    def __init__(self, url: str, api_key: str | None, model: str | None, concurrency: int, timeout: float = 600):
        self.url, self.api_key, self.concurrency, self.timeout = url.rstrip("/"), api_key, concurrency, timeout
        self.model = model or self._first_model()
        self.label, self.identity = self.model, {"api_url": self.url, "api_model": self.model}

    def _call(self, path: str, body: dict | None = None) -> dict:
        url = self.url + path
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            detail = _error_message(e.read())
            if e.code == 401:
                raise UserError(f"{url}: the endpoint refuses the API key (HTTP 401{detail}); give --api_key") from None
            raise UserError(f"{url}: HTTP {e.code}{detail}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(f"{url} does not answer ({reason})") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise UserError(f"{url}: malformed JSON in the response ({raw[:80]!r})") from None

    def _first_model(self) -> str:
        reply = self._call("/models")
        try:
            return reply["data"][0]["id"]
        except (KeyError, IndexError, TypeError):
            raise UserError(f"{self.url}/models: no model listed; give --api_model") from None

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
        return content or ""

    def answers(self, prompts: list[tuple[list[dict], list | None]], gen: Generation) -> Iterator[str]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = [pool.submit(self._answer, messages, tools, gen) for messages, tools in prompts]
            try:
                for future in futures:
                    yield future.result()
            finally:
                for future in futures:
                    future.cancel()


def _error_message(body: bytes) -> str:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""
    return f": {message}"
