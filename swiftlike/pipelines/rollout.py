"""`wb rollout`: start a generation server for `wb grpo --use_vllm --vllm_mode server`."""
from __future__ import annotations

from .. import accel
from ..config import RolloutConfig
from ..errors import UserError
from ..models import build_miniature, load_model
from ..models.loader import padding_id, quiet_libraries
from ..models.resolve import base_weights, load_reference_tokenizer, resolve


def _vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None and accel.device_type() == "cuda"


def make_engine(cfg: RolloutConfig):
    backend = cfg.backend
    ref = resolve(cfg.model, miniature=cfg.miniature, hub=cfg.hub)
    if backend == "auto":
        backend = "vllm" if _vllm_available() else "transformers"
    if backend == "vllm":
        if cfg.miniature:
            raise UserError("--miniature models are served with --backend transformers")
        from ..rollout.vllm_engine import VLLMRollout

        return VLLMRollout(base_weights(ref, cfg.trust_remote_code), cfg.torch_dtype, cfg.gpu_memory_utilization, cfg.max_model_len,
                           cfg.tensor_parallel_size, cfg.seed)
    from ..rollout.server import HFEngine

    tokenizer = load_reference_tokenizer(ref, cfg.trust_remote_code)
    dtype = accel.resolve_dtype(cfg.torch_dtype)
    if cfg.miniature:
        model = build_miniature(cfg.model, cfg.hub, seed=cfg.seed, dtype=dtype).to(accel.device())
    else:
        model = load_model(base_weights(ref, cfg.trust_remote_code), dtype, attn_implementation=cfg.attn_implementation,
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
