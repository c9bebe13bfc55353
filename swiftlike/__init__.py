"""swiftlike: a post-training workbench for large language models.

    import swiftlike as wb
    result = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["data.jsonl"], lora=True)

Heavy libraries (torch, transformers) load on first use, so `import swiftlike` and `wb --help` stay fast.
"""
from __future__ import annotations

import os

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

    cfg = _command(config_class, config, kwargs)
    if (cfg.nproc_per_node > 1 or cfg.nnodes > 1) and "LOCAL_RANK" not in os.environ:
        from .errors import UserError  # (the CLI relaunches itself under torchrun; a notebook cannot)

        raise UserError("nproc_per_node / nnodes > 1 start several processes: run `wb` from a shell (or torchrun "
                        "a script calling this function once per process)")
    if isinstance(cfg, configs.GRPOConfig):
        from .pipelines.grpo import run_grpo

        return run_grpo(cfg)
    from .pipelines.sft import run_sft

    return run_sft(cfg)


def _rows_in_memory(kwargs: dict) -> dict:
    """dataset= / val_dataset= given as rows (a list of dicts, a datasets.Dataset): written to a .jsonl under the
    cache, which the run then reads like any file."""
    from .data.files import inline_rows

    out = {}
    for key in ("dataset", "val_dataset"):
        path = inline_rows(kwargs[key], key) if key in kwargs else None
        if path is not None:
            out[key] = path
    return out


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


def _command(config_class: str, config, kwargs):
    """A config of `config_class` from a config object or keyword arguments, read as flags are: coerced
    ("a.jsonl" is a list of one), choices checked; rows given in memory become a file (_rows_in_memory)."""
    from . import config as configs

    if config is not None and kwargs:
        raise TypeError("pass either a config object or keyword arguments, not both")
    cls = getattr(configs, config_class)
    if isinstance(config, (str, os.PathLike)):
        raise TypeError(f"config= takes a {cls.__name__}; a YAML recipe's options are keyword arguments: "
                        f"wb.{config_class[:-len('Config')].lower()}(**wb.config.load_recipe({os.fspath(config)!r}))")
    if config is not None:
        if type(config) is not cls:  # (wb.dpo(config=SFTConfig(...)) ran SFT)
            raise TypeError(f"this function takes a {cls.__name__}, got a {type(config).__name__}")
        kwargs = {f.name: getattr(config, f.name) for f in configs.options(cls)}
    return configs.build_config(cls, {**kwargs, **_rows_in_memory(kwargs)}, where="argument")


# (named apart from the commands: swiftlike.infer, .export and .eval are packages, whose import would replace a
# function of the same name on this module)
def inference(config=None, **kwargs):
    """`wb infer`: with `query`, the answer (str); with `dataset`, the path of the answers file (.jsonl, resumable);
    a reward model with `query` and `response` gives its score. Keyword names are `wb infer`'s flags."""
    from .pipelines.infer import run_infer

    cfg = _command("InferConfig", config, kwargs)
    if not cfg.dataset and cfg.query is None:
        from .errors import UserError

        raise UserError("wb.inference needs query= (one answer) or dataset= (a file of prompts); for a chat in Python "
                        "use wb.load_model and swiftlike.pipelines.infer.generate")
    return run_infer(cfg)


def export_model(config=None, **kwargs):
    """`wb export`: merged, quantized or GGUF; returns the export's directory (a pathlib.Path)."""
    from .pipelines.export import run_export

    return run_export(_command("ExportConfig", config, kwargs))


def evaluate(config=None, **kwargs):
    """`wb eval`: every model on every dataset; returns the results ({model: {dataset: {metric: value, ...}}}) as
    written to results.json."""
    from .pipelines.eval import run_eval

    return run_eval(_command("EvalConfig", config, kwargs))


def deploy(config=None, **kwargs):
    """`wb deploy` on a thread of this process: returns a Deployment once it serves (`.url`, OpenAI API under
    url + "/v1"; `.stop()`, or use it in a `with` block). Keyword names are `wb deploy`'s flags; port=0 picks a
    free port."""
    from .pipelines.deploy import Deployment

    return Deployment(_command("DeployConfig", config, kwargs))


def register_reward(name: str):
    """Decorator: make a reward function available to `wb grpo --reward_funcs NAME` (and wb.grpo)."""
    from .rewards import register_reward as _register

    return _register(name)


def get_template(name_or_model_id: str, tokenizer, loss_scope: str = "assistant"):
    """A chat template by name (`qwen3`) or model id, bound to `tokenizer`: a model the registry does not know
    (`org/name`) renders with its tokenizer's own chat template; a template name must be registered."""
    from .templates import check_template_name, get_template as _get

    if "/" not in str(name_or_model_id):  # (a typo such as "qwen_3" would fall back to the tokenizer's template)
        check_template_name(name_or_model_id)
    return _get(name_or_model_id, tokenizer, loss_scope)


def load_model(model="", *, miniature: bool = False, adapters=None, torch_dtype: str = "auto",
               hub: str = "huggingface"):
    """(model, tokenizer, template) ready for inference; see `wb infer` for the same from the CLI. `model` and
    `adapters` are paths (str or pathlib.Path) or hub ids."""
    from .models.resolve import load_for_inference

    return load_for_inference(model=str(model or ""), adapters=None if adapters is None else str(adapters),
                              miniature=miniature, torch_dtype=torch_dtype, hub=hub)


__all__ = ["__version__", "deploy", "dpo", "evaluate", "export_model", "get_template", "grpo", "inference", "kto",
           "load_model", "pt", "register_reward", "rm", "sft"]
