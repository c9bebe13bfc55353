"""`wb rollout`: a generation server GRPO trainers call over HTTP (`--use_vllm --vllm_mode server`).

    GET  /health          {"status": "ok", "backend": ..., "model": ...}
    POST /generate        {"prompts": [[ids]], "n": N, "sampling": {...}} -> {"completion_ids": [[ids]]}
    POST /update_weights  a safetensors payload of (name -> tensor) -> {"updated": count}

It serves with vLLM on a GPU machine, or with transformers (`--backend transformers`, any machine).
Requests are served one at a time. It binds to 127.0.0.1 unless --host says otherwise.
"""
from __future__ import annotations

import json
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
        return self.rollout.generate(prompts, n, sampling)

    def load_weights(self, weights) -> int:
        own = dict(self.model.named_parameters())
        count = 0
        for name, tensor in weights:
            if name not in own:
                raise KeyError(f"unknown parameter {name!r}")
            own[name].data.copy_(tensor.to(own[name].dtype))
            count += 1
        return count


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
                        req = json.loads(body)
                        given = req.get("sampling", {})
                        sampling = Sampling(**{**given, "stop_token_ids": tuple(given.get("stop_token_ids", ()))})
                        ids = engine.generate(req["prompts"], int(req.get("n", 1)), sampling)
                        self._reply(200, {"completion_ids": ids})
                    elif self.path == "/update_weights":
                        self._reply(200, {"updated": engine.load_weights(from_bytes(body).items())})
                    else:
                        self._reply(404, {"error": f"no such endpoint {self.path}"})
            except (KeyError, TypeError, ValueError) as e:
                self._reply(400, {"error": f"{type(e).__name__}: {e}"})

    return Handler


def serve(engine, model_name: str, host: str, port: int, ready=None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(engine, model_name))
    if ready is not None:
        ready(server)
    server.serve_forever()
    return server
