"""`wb rollout`: a generation server GRPO trainers call over HTTP (`--use_vllm --vllm_mode server`).

    GET  /health          {"status": "ok", "backend": ..., "model": ...}
    POST /generate        {"prompts": [[ids]], "n": N, "sampling": {...}} -> {"completion_ids": [[ids]]}
    POST /update_weights  a safetensors payload of (name -> tensor) -> {"updated": count}

It serves with vLLM on a GPU machine, or with transformers (`--backend transformers`, any machine).
Requests are served one at a time. It binds to 127.0.0.1 unless --host says otherwise.
"""
from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import Sampling
from .weights import from_bytes


class HFEngine:
    """transformers backend: the base model itself, weights replaced in place."""

    name = "transformers"

    def __init__(self, model, pad_token_id: int):
        from .hf import HFRollout

        self.model = model
        self.rollout = HFRollout(model, pad_token_id)

    def generate(self, prompts, n, sampling):
        vocab = self.model.get_input_embeddings().num_embeddings  # (on a GPU an id past it is a device assert)
        bad = next((t for p in prompts for t in p if not (isinstance(t, int) and 0 <= t < vocab)), None)
        if bad is not None:
            raise ValueError(f"token id {bad!r} is outside the vocabulary (size {vocab})")
        return self.rollout.generate(prompts, n, sampling)

    def load_weights(self, weights) -> int:
        own = dict(self.model.named_parameters())
        weights = list(weights)
        for name, tensor in weights:  # every tensor checked before any is copied: a payload applies whole or not
            if name not in own:
                raise KeyError(f"unknown parameter {name!r}")
            if tuple(tensor.shape) != tuple(own[name].shape):  # (copy_ would broadcast a smaller one silently)
                raise ValueError(f"{name}: shape {tuple(tensor.shape)}, the model's is {tuple(own[name].shape)}")
        for name, tensor in weights:
            own[name].data.copy_(tensor.to(own[name].dtype))
        return len(weights)


def make_handler(engine, model_name: str):
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # quiet: one line per request is noise at GRPO rates
            pass

        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self._reply(200, {"status": "ok", "backend": engine.name, "model": model_name})
            else:
                self._reply(404, {"error": f"no such endpoint {self.path}"})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                with lock:
                    if self.path == "/generate":
                        prompts, n, sampling = _generate_request(json.loads(body))
                        self._reply(200, {"completion_ids": engine.generate(prompts, n, sampling)})
                    elif self.path == "/update_weights":
                        self._reply(200, {"updated": engine.load_weights(from_bytes(body).items())})
                    else:
                        self._reply(404, {"error": f"no such endpoint {self.path}"})
            except (KeyError, TypeError, ValueError, AttributeError) as e:  # what the request got wrong
                self._reply(400, {"error": f"{type(e).__name__}: {e}"})
            except Exception as e:  # noqa: BLE001  (answered: the trainer says what failed, not "not answering")
                print(f"[wb] rollout: {self.path} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                self._reply(500, {"error": f"{type(e).__name__}: {e}"})

    return Handler


def _generate_request(req: dict) -> tuple[list[list[int]], int, Sampling]:
    prompts, n = req["prompts"], int(req.get("n", 1))
    if not isinstance(prompts, list) or not all(isinstance(p, list) and p for p in prompts):
        raise ValueError("prompts must be a list of non-empty lists of token ids")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    given = req.get("sampling", {})
    sampling = Sampling(**{**given, "stop_token_ids": tuple(given.get("stop_token_ids", ()))})
    if sampling.max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {sampling.max_tokens}")
    return prompts, n, sampling


def serve(engine, model_name: str, host: str, port: int, ready=None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(engine, model_name))
    if ready is not None:
        ready(server)
    server.serve_forever()
    return server
