"""`wb deploy`: serve a base model and LoRA adapters trained on it over an OpenAI-compatible HTTP API.

The base is --model (a hub id, a local model, a full checkpoint or an export) or, without it, the model the
adapters' args.json names. Every adapter must have been trained on that base: one that was not is refused at
start-up, before any weights are loaded.
"""
from __future__ import annotations

import json
import socket
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..config import DeployConfig
from ..errors import UserError
from ..hub import is_local
from ..models.resolve import config_overrides, read_args, refuse_added_tokens, resolve
from ..models.rope import describe


@dataclass(frozen=True)
class BaseModel:
    """What the adapters are checked against and what is loaded."""

    name: str                 # as the user knows it: a hub id or a path
    identities: frozenset     # hub ids and resolved directories that name these weights
    miniature: bool           # a --miniature (random) model, or one a miniature run saved
    load: dict                # keyword arguments of load_for_inference


def _identities(*names) -> frozenset:
    return frozenset(str(Path(n).expanduser().resolve()) if is_local(n) else n for n in names if n)


def adapter_base(path: str) -> BaseModel:
    """The base an adapter directory was trained on, from its args.json (swiftlike) or adapter_config.json (PEFT)."""
    args = read_args(path) if (Path(path) / "args.json").is_file() else {}
    peft_base = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8")).get(
        "base_model_name_or_path")
    name = args.get("model") or peft_base or "an unknown base"
    return BaseModel(name, _identities(args.get("model"), args.get("base_model_dir"), peft_base),
                     bool(args.get("miniature")), {})


def served_base(cfg: DeployConfig, adapters: dict[str, str]) -> BaseModel:
    options = dict(torch_dtype=cfg.torch_dtype, hub=cfg.hub, trust_remote_code=cfg.trust_remote_code,
                   attn_implementation=cfg.attn_implementation)
    if cfg.model:
        ref = resolve(cfg.model, None, cfg.miniature, cfg.hub, cfg.template)
        return BaseModel(cfg.model, _identities(ref.model, ref.base, ref.args.get("base_model_dir")),
                         cfg.miniature or bool(ref.args.get("miniature")),
                         dict(model=cfg.model, miniature=cfg.miniature, template=cfg.template, **options))
    first = next(iter(adapters.values()))
    ref, base = resolve(adapters=first, hub=cfg.hub, template=cfg.template), adapter_base(first)
    # the weights it was trained on (a miniature run saved them), rendered with the template it was trained with
    return BaseModel(base.name, base.identities, base.miniature,
                     dict(model=ref.base, template=ref.template, overrides=ref.overrides,
                          **{**options, "hub": ref.hub}))


def check_adapters(base: BaseModel, adapters: dict[str, str]) -> None:
    """Every adapter was trained on the served base, writes answers (not a `wb rm` head), renders with the template
    every request is rendered with, and can share a batch (PEFT mixes no DoRA adapters in one batch)."""
    served = _served_template(base)
    for name, path in adapters.items():
        trained = adapter_base(path)
        if not trained.identities & base.identities or trained.miniature != base.miniature:
            mini = " (miniature)"
            raise UserError(f"adapter {name!r} ({path}) was trained on {trained.name}"
                            f"{mini if trained.miniature else ''}, not on the served base {base.name}"
                            f"{mini if base.miniature else ''}; serve each base with its own `wb deploy`")
        args = read_args(path) if (Path(path) / "args.json").is_file() else {}
        if args.get("task") == "rm":
            raise UserError(f"adapter {name!r} ({path}) is a reward model (`wb rm`): it scores answers, it does not "
                            "write them")
        if served and args.get("template") and args["template"] != served:
            raise UserError(f"adapter {name!r} ({path}) was trained with template {args['template']}, the server "
                            f"renders every request with {served}; serve it with its own `wb deploy` (or --template)")
        refuse_added_tokens(name, path, "the served base's tokenizer lacks")
        served_rope, trained_rope = base.load.get("overrides") or {}, config_overrides(path)
        if trained_rope != served_rope:
            raise UserError(f"adapter {name!r} ({path}) was trained with {describe(trained_rope)}, the served base "
                            f"runs {describe(served_rope)}; serve it with its own `wb deploy --adapters` (its base "
                            "then loads as it was trained)")
        config = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
        if config.get("use_dora"):
            raise UserError(f"adapter {name!r} ({path}) is a DoRA adapter, which PEFT cannot mix with other models "
                            "in one batch: merge it with `wb export --adapters PATH --merge` and serve the export")


def _served_template(base: BaseModel) -> str | None:
    load = base.load
    if not load:
        return None
    return resolve(load["model"], None, load.get("miniature", False), load.get("hub", "huggingface"),
                   load.get("template")).template


def build_engine(cfg: DeployConfig, base: BaseModel, adapters: dict[str, str]):
    """The inference engine: the base weights with every adapter loaded beside them (the one place that
    decides which engine serves)."""
    if cfg.infer_backend == "vllm":
        return _vllm_engine(cfg, base, adapters)
    from ..infer import TransformersEngine
    from ..models.resolve import load_for_inference

    model, tokenizer, template = load_for_inference(**base.load)
    if getattr(model, "swiftlike_task", "sft") == "rm":
        raise UserError(f"{base.name} is a reward model (`wb rm`): it scores answers, it does not write them")
    return TransformersEngine(model, tokenizer, template, max_batch_size=cfg.max_batch_size, adapters=adapters,
                              default_model="base")


def _vllm_engine(cfg: DeployConfig, base: BaseModel, adapters: dict[str, str]):
    """vLLM serves the base weights from disk and each adapter as a LoRARequest; its context is pinned to the
    server's (--max_model_len, else the model's) so that both refuse the same prompts."""
    from .infer import vllm_engine

    load = base.load
    ref = resolve(load["model"], None, load.get("miniature", False), load["hub"], load["template"])
    return vllm_engine(ref, adapters, cfg.trust_remote_code, max_model_len=cfg.max_model_len, default_model="base",
                       overrides=load.get("overrides"),
                       max_batch_size=cfg.max_batch_size, dtype=cfg.torch_dtype,
                       gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                       tensor_parallel_size=cfg.vllm_tensor_parallel_size)


def context_length(cfg: DeployConfig, engine) -> int:
    known = getattr(engine, "max_model_len", None)
    if cfg.max_model_len is None:
        if known is None:
            raise UserError("the model's context length is unknown: give --max_model_len")
        return known
    if known is not None and cfg.max_model_len > known:
        raise UserError(f"--max_model_len {cfg.max_model_len} is longer than the model's context ({known} tokens)")
    return cfg.max_model_len


def _reserve(host: str, port: int) -> socket.socket:
    """The address, bound but not yet listening: taken before the model loads (a busy port fails at once) while
    clients are refused, not left hanging, until the server is ready."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def run_deploy(cfg: DeployConfig) -> None:
    """`wb deploy`: serve in the foreground until SIGTERM / Ctrl-C (requests in flight finish first)."""
    from ..serve import serve

    with _serving(cfg) as (app, sock):
        stopped_by = serve(app, sock, cfg.drain_timeout, cfg.access_log)
        if stopped_by:
            print(f"[wb] deploy: stopped ({stopped_by}) after the requests in flight", file=sys.stderr)


class Deployment:
    """A `wb deploy` server on a thread of this process (the Python API: notebooks, scripts): `url` (the
    OpenAI-compatible API is under url + "/v1"), `stop()`; a context manager too."""

    def __init__(self, cfg: DeployConfig):
        from ..serve.server import BackgroundServer

        self._stack = ExitStack()  # closed in reverse: the server stops, then the engine and socket go
        try:
            app, sock = self._stack.enter_context(_serving(cfg))
            self.url = self._stack.enter_context(BackgroundServer(app, cfg.host, drain_timeout=cfg.drain_timeout,
                                                                  sock=sock)).url
        except BaseException:
            self._stack.close()
            raise
        self.serving = True

    def stop(self) -> None:
        """Stop accepting requests, let those in flight finish (up to --drain_timeout), free the model."""
        self.serving = False
        self._stack.close()

    def __enter__(self) -> "Deployment":
        return self

    def __exit__(self, *_) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Deployment({self.url}, {'serving' if self.serving else 'stopped'})"


@contextmanager
def _serving(cfg: DeployConfig):
    """(the app, its reserved socket) with the engine loaded; the engine closed and the socket freed after."""
    from ..models.loader import quiet_libraries
    from ..serve import ServeSettings, create_app

    adapters = cfg.adapter_paths()
    base = served_base(cfg, adapters)
    check_adapters(base, adapters)
    sock = _reserve(cfg.host, cfg.port)
    quiet_libraries()
    try:
        engine = build_engine(cfg, base, adapters)
    except BaseException:
        sock.close()
        raise
    try:
        settings = ServeSettings(model_name=cfg.served_model_name or base.name,
                                 max_model_len=context_length(cfg, engine), api_key=cfg.api_key,
                                 max_tokens_limit=cfg.max_tokens_limit, max_request_bytes=cfg.max_request_bytes,
                                 private_media_urls=cfg.allow_private_media_urls)
        app = create_app(engine, settings)
        names = [settings.model_name, *adapters]
        host, port = sock.getsockname()[:2]
        print(f"[wb] deploy: serving {', '.join(names)} ({engine.name} engine, batches of up to "
              f"{cfg.max_batch_size}, context {settings.max_model_len} tokens"
              f"{', API key required' if cfg.api_key else ''}) on http://{host}:{port}/v1", flush=True)
        yield app, sock
    finally:
        engine.close()
        sock.close()
