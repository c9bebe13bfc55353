"""swiftlike: a post-training workbench for large language models.

    import swiftlike as wb
    result = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["data.jsonl"], lora=True)

Heavy libraries (torch, transformers) load on first use, so `import swiftlike` and `wb --help` stay fast.
"""
from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):
    """`wb.config.SFTConfig(...)` right after `import swiftlike as wb` (the module loads on first use)."""
    if name == "config":
        import importlib

        return importlib.import_module(".config", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def sft(config=None, **kwargs):
    """Run supervised fine-tuning. Keyword names are the CLI flag names; returns a TrainResult
    (output_dir, checkpoint, metrics, log_history)."""
    return _train("SFTConfig", config, kwargs)


def _train(config_class: str, config, kwargs):
    from . import config as configs

    if config is not None and kwargs:
        raise TypeError("pass either a config object or keyword arguments, not both")
    cls = getattr(configs, config_class)
    if config is not None:  # read as keyword arguments are: coerced ("a.jsonl" is a list of one), choices checked
        if type(config) is not cls:  # (wb.dpo(config=SFTConfig(...)) ran SFT)
            raise TypeError(f"this function takes a {cls.__name__}, got a {type(config).__name__}")
        kwargs = {f.name: getattr(config, f.name) for f in configs.options(cls)}
    cfg = configs.build_config(cls, kwargs, where="argument")
    import os

    if (cfg.nproc_per_node > 1 or cfg.nnodes > 1) and "LOCAL_RANK" not in os.environ:
        from .errors import UserError  # (the CLI relaunches itself under torchrun; a notebook cannot)

        raise UserError("nproc_per_node / nnodes > 1 start several processes: run `wb` from a shell (or torchrun "
                        "a script calling this function once per process)")
    if isinstance(cfg, configs.GRPOConfig):
        from .pipelines.grpo import run_grpo

        return run_grpo(cfg)
    from .pipelines.sft import run_sft

    return run_sft(cfg)


def dpo(config=None, **kwargs):
    """Preference training (DPO, IPO, hinge, robust, SimPO, ORPO, CPO); keyword names are `wb dpo`'s flags."""
    return _train("DPOConfig", config, kwargs)


def kto(config=None, **kwargs):
    """Unpaired preference training (KTO); keyword names are `wb kto`'s flags."""
    return _train("KTOConfig", config, kwargs)


def rm(config=None, **kwargs):
    """Reward-model training (Bradley-Terry on a sequence-classification head); keyword names are `wb rm`'s flags."""
    return _train("RMConfig", config, kwargs)


def pt(config=None, **kwargs):
    """Continued pretraining on {"text": ...} rows; keyword names are `wb pt`'s flags."""
    return _train("PTConfig", config, kwargs)


def grpo(config=None, **kwargs):
    """Reinforcement tuning with group-relative advantages; keyword names are `wb grpo`'s flags, and
    `reward_funcs` may hold Python callables beside names: fn(completions, **columns) -> list of floats."""
    return _train("GRPOConfig", config, kwargs)


def register_reward(name: str):
    """Decorator: make a reward function available to `wb grpo --reward_funcs NAME` (and wb.grpo)."""
    from .rewards import register_reward as _register

    return _register(name)


def get_template(name_or_model_id: str, tokenizer, loss_scope: str = "assistant"):
    """A chat template by name (`qwen3`) or registered model id, bound to `tokenizer`."""
    from .templates import get_template as _get

    return _get(name_or_model_id, tokenizer, loss_scope)


def load_model(model: str, *, miniature: bool = False, adapters: str | None = None, torch_dtype: str = "auto",
               hub: str = "huggingface"):
    """(model, tokenizer, template) ready for inference; see `wb infer` for the same from the CLI."""
    from .models.resolve import load_for_inference

    return load_for_inference(model=model, adapters=adapters, miniature=miniature, torch_dtype=torch_dtype, hub=hub)


__all__ = ["__version__", "dpo", "get_template", "grpo", "kto", "load_model", "pt", "register_reward", "rm", "sft"]
