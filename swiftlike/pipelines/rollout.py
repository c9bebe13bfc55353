"""`wb rollout`: start a generation server for `wb grpo --use_vllm --vllm_mode server`."""
from __future__ import annotations

from .. import accel
from ..config import RolloutConfig
from ..errors import UserError
from ..hub import download, is_local
from ..models import build_miniature, load_model, load_tokenizer
from ..models.loader import padding_id, quiet_libraries


def _vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None and accel.device_type() == "cuda"


def make_engine(cfg: RolloutConfig):
    backend = cfg.backend
    if backend == "auto":
        backend = "vllm" if _vllm_available() else "transformers"
    if backend == "vllm":
        if cfg.miniature:
            raise UserError("--miniature models are served with --backend transformers")
        from ..rollout.vllm_engine import VLLMRollout

        path = cfg.model if is_local(cfg.model) else download(cfg.model, cfg.hub, with_code=cfg.trust_remote_code)
        return VLLMRollout(path, cfg.torch_dtype, cfg.gpu_memory_utilization, cfg.max_model_len,
                           cfg.tensor_parallel_size, cfg.seed)
    from ..rollout.server import HFEngine

    tokenizer = load_tokenizer(cfg.model, cfg.hub, cfg.trust_remote_code, miniature=cfg.miniature)
    dtype = accel.resolve_dtype(cfg.torch_dtype)
    if cfg.miniature:
        model = build_miniature(cfg.model, cfg.hub, seed=cfg.seed, dtype=dtype).to(accel.device())
    else:
        path = cfg.model if is_local(cfg.model) else download(cfg.model, cfg.hub, with_code=cfg.trust_remote_code)
        model = load_model(path, dtype, attn_implementation=cfg.attn_implementation,
                           trust_remote_code=cfg.trust_remote_code)
    return HFEngine(model.eval(), padding_id(tokenizer))


def run_rollout(cfg: RolloutConfig, ready=None) -> None:
    from ..rollout.server import serve

    quiet_libraries()
    accel.seed_everything(cfg.seed)
    engine = make_engine(cfg)

    def announce(server):
        print(f"[wb] rollout: serving {cfg.model} with {engine.name} on http://{cfg.host}:{server.server_port}",
              flush=True)
        if ready is not None:
            ready(server)

    try:
        serve(engine, cfg.model, cfg.host, cfg.port, announce)
    except OSError as e:
        raise UserError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}") from None
