"""The trainer's side of `wb rollout`: requests over HTTP (standard library only)."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from . import Sampling
from ..errors import UserError

WEIGHT_CHUNK_BYTES = 256 << 20  # one request per ~256 MB of weights


def generate_request(prompts: list[list[int]], n: int, sampling: Sampling) -> dict:
    return {"prompts": [list(p) for p in prompts], "n": n, "sampling": sampling.to_json()}


def weight_chunks(weights, limit: int = WEIGHT_CHUNK_BYTES):
    """Group (name, tensor) pairs into payloads of about `limit` bytes (a tensor is never split)."""
    chunk, size = [], 0
    for name, tensor in weights:
        chunk.append((name, tensor))
        size += tensor.numel() * tensor.element_size()
        if size >= limit:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class NotAnswering(UserError):
    """Nothing answered at the server's address (it may still be starting)."""


class ServerRollout:
    name = "server"

    def __init__(self, url: str, timeout: float = 600.0, wait: float = 240.0):
        self.url, self.timeout = url.rstrip("/"), timeout
        self.synced = False  # the first sync sends every weight: the server may have started from other ones
        deadline = time.monotonic() + wait
        while True:
            try:
                self.info = self._call("GET", "/health", None)
                return
            except NotAnswering:  # (an answer that is an error -- another server there -- is said at once)
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def _call(self, method: str, path: str, data: bytes | None, content_type: str = "application/json") -> dict:
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:300]
            raise UserError(f"rollout server {self.url}{path}: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            if type(e) is TimeoutError and path != "/health":  # connected, then no answer in time (a connection
                # that timed out is a URLError around one)
                raise UserError(f"rollout server {self.url}{path}: no answer within {self.timeout:g} s (it is "
                                "up, but this request took longer: fewer or shorter completions per step, or a "
                                "faster server)") from None
            raise NotAnswering(f"rollout server {self.url} is not answering ({reason}); start one "
                               "with `wb rollout --model ...`") from None

    def generate(self, prompts: list[list[int]], n: int, sampling: Sampling) -> list[list[int]]:
        body = json.dumps(generate_request(prompts, n, sampling)).encode()
        return self._call("POST", "/generate", body)["completion_ids"]

    def sync_weights(self, model) -> None:
        from .weights import policy_weights, to_bytes

        for chunk in weight_chunks(policy_weights(model, everything=not self.synced)):
            self._call("POST", "/update_weights", to_bytes(chunk), "application/octet-stream")
        self.synced = True
