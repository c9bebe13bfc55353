"""`wb`: the command-line entry point. Flags are generated from the config dataclasses.

Heavy imports happen inside the command functions so `wb --help` returns at once.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from ..config import (DeployConfig, DPOConfig, EvalConfig, ExportConfig, GRPOConfig, InferConfig, KTOConfig, PreviewConfig,
                      PTConfig, RMConfig, RolloutConfig, SFTConfig, options,
                      build_config, closest_name, field_types, load_recipe)
from ..errors import UserError
from .launch import relaunch, say

COMMANDS = {
    "sft": (SFTConfig, "Supervised fine-tuning (LoRA, QLoRA or full) on chat data."),
    "pt": (PTConfig, "Continued pretraining on plain text ({\"text\": ...} rows); every token is trained."),
    "dpo": (DPOConfig, "Preference training: DPO and its IPO/hinge/robust variants, SimPO, ORPO, CPO."),
    "kto": (KTOConfig, "Unpaired preference training (KTO) on answers labelled desirable or undesirable."),
    "rm": (RMConfig, "Reward-model training: a scalar head on the base model, Bradley-Terry loss on pairs."),
    "grpo": (GRPOConfig, "Reinforcement tuning with group-relative advantages (GRPO, Dr. GRPO, DAPO, BNPO, GSPO) "
                         "and reward functions."),
    "rollout": (RolloutConfig, "Serve generations to `wb grpo --use_vllm --vllm_mode server` (vLLM or transformers)."),
    "infer": (InferConfig, "Answer a query, or chat, with a model or a checkpoint from `wb sft`."),
    "export": (ExportConfig, "Write a checkpoint as a standard Hugging Face model (LoRA adapters merged)."),
    "deploy": (DeployConfig, "Serve a model and its LoRA adapters over an OpenAI-compatible HTTP API."),
    "eval": (EvalConfig, "Score a model, checkpoints or an OpenAI-compatible endpoint on evaluation data (math, "
                         "multiple choice, QA, perplexity)."),
}


def _bool(value: str) -> bool:
    v = value.lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


CONFIG_HELP = "YAML recipe with option names as keys; flags given on the command line override it."


def default_of(f: dataclasses.Field):
    """A field's default as --help shows it, or None where it has none worth showing (unset, empty, false)."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if default is None or default is False or default in ("", []):  # (0 is shown)
        return None
    return " ".join(map(str, default)) if isinstance(default, list) else default


def _add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    parser.add_argument("--config", metavar="RECIPE.yaml", default=argparse.SUPPRESS, help=CONFIG_HELP)
    types = field_types(cls)
    for f in options(cls):
        typ = str(types[f.name])
        default = default_of(f)
        help_text = f.metadata.get("help", "") + (f" (default: {default})" if default is not None else "")
        kw = dict(default=argparse.SUPPRESS, help=help_text, dest=f.name)
        if "bool" in typ:
            parser.add_argument(f"--{f.name}", nargs="?", const=True, type=_bool, metavar="BOOL", **kw)
        elif "list" in typ:
            parser.add_argument(f"--{f.name}", nargs="+", action="extend", metavar="VALUE", **kw)  # repeatable
        elif "int" in typ:
            parser.add_argument(f"--{f.name}", type=int, metavar="N", **kw)
        elif "float" in typ:
            parser.add_argument(f"--{f.name}", type=float, metavar="X", **kw)
        else:
            choices = f.metadata.get("choices")
            parser.add_argument(f"--{f.name}", metavar=f.metadata.get("metavar", "VALUE"),
                                choices=choices and (*choices, *f.metadata.get("aliases", {})), **kw)


class _Parser(argparse.ArgumentParser):
    """argparse's errors (a value of the wrong type, an unknown choice) as one line, like every other error, not
    the whole usage block."""

    def error(self, message: str):
        raise UserError(f"{message}; see {self.prog} --help")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wb", description="swiftlike: post-training workbench for LLMs.", allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (cls, help_text) in COMMANDS.items():
        _add_config_flags(sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False), cls)
    data = sub.add_parser("data", help="Inspect data as a model will see it.")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    _add_config_flags(data_sub.add_parser(
        "preview", help="Show rendered rows with the trained spans highlighted (or --json ids and labels).",
        allow_abbrev=False), PreviewConfig)
    datasets = sub.add_parser("datasets", help="List named datasets (the project's demos and known hub sets).")
    datasets.add_argument("--task", choices=("sft", "preference", "kto", "grpo"), help="Only datasets for this task.")
    env = sub.add_parser("env", help="Show the devices, dtypes and library versions found.")
    env.add_argument("--json", action="store_true", help="Print machine-readable JSON.")
    models = sub.add_parser("models", help="List registered models and their templates.")
    models.add_argument("--family", help="Only this family (e.g. qwen3).")
    return parser


def _reject_unknown(unknown: list[str], parser: argparse.ArgumentParser) -> None:
    flags = [a for a in unknown if a.startswith("--")]
    if not flags and not unknown:
        return
    if not flags:
        raise UserError(f"unexpected argument {unknown[0]!r}")
    flag = flags[0].split("=")[0]
    known = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    close = closest_name(flag, known)
    raise UserError(f"unknown flag {flag}" + (f"; did you mean {close}?" if close else f"; see {parser.prog} --help"))


# option -> (torchrun's environment variable, its type)
LAUNCH_ENV = {"nproc_per_node": ("NPROC_PER_NODE", int), "nnodes": ("NNODES", int), "node_rank": ("NODE_RANK", int),
              "master_addr": ("MASTER_ADDR", str), "master_port": ("MASTER_PORT", int)}


def launch_plan(cfg, given: frozenset | set = frozenset()) -> dict:
    """Processes per node and the rendezvous of a training command: its flags (`given`: the options the command
    line or recipe set), else torchrun's usual environment variables, else the defaults."""
    plan = {}
    for name, (var, cast) in LAUNCH_ENV.items():
        value = getattr(cfg, name)
        if name not in given and var in os.environ:
            try:
                value = cast(os.environ[var])
            except ValueError:
                raise UserError(f"{var}={os.environ[var]!r} is not a number (--{name})") from None
        plan[name] = value
    nnodes = plan["nnodes"]
    plan["master_port"] = plan["master_port"] or (29500 if nnodes > 1 else None)
    if not 0 <= plan["node_rank"] < nnodes:
        raise UserError(f"node rank {plan['node_rank']} is not in 0..{nnodes - 1} (--node_rank / NODE_RANK)")
    return plan


TRAINING_MODES = ("lora", "qlora", "full")
_debug = {"on": False}  # full tracebacks: --debug, read before the options are (an error may come first)


def _run(argv: list[str]) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    sub = parser._subparsers._group_actions[0].choices.get(args.command) if args.command else None
    if args.command == "data" and getattr(args, "data_command", None):
        sub = sub._subparsers._group_actions[0].choices[args.data_command]
    _reject_unknown(unknown, sub or parser)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "env":
        from .info import print_env

        return print_env(args.json)
    if args.command == "datasets":
        from .info import print_datasets

        return print_datasets(args.task)
    if args.command == "models":
        from .info import print_models

        return print_models(args.family)
    if args.command == "data":
        if not args.data_command:
            raise UserError("wb data needs an action: preview")
        cls = PreviewConfig
    else:
        cls = COMMANDS[args.command][0]
    values = vars(args).copy()
    values.pop("command")
    values.pop("data_command", None)
    recipe = values.pop("config", None)
    from_recipe = load_recipe(recipe) if recipe else {}
    if any(values.get(mode) for mode in TRAINING_MODES):  # a mode flag replaces the recipe's mode
        from_recipe = {k: v for k, v in from_recipe.items() if k not in TRAINING_MODES}
    merged = {**from_recipe, **values}
    if str(merged.get("debug")).lower() in ("true", "1", "yes"):  # a recipe's `debug: true`, for what follows too
        _debug.update(on=True)
    where = f"key in {recipe}" if recipe else "option"
    for key in merged:
        if key not in field_types(cls):
            from ..config import unknown_key_error

            raise unknown_key_error(key, cls, where, see=f"{sub.prog} --help")
    cfg = build_config(cls, merged)
    _debug.update(on=cfg.debug)
    if args.command in ("sft", "pt", "dpo", "kto", "rm", "grpo"):
        # (every process trains into the directory named here: a default one is stamped with the time)
        existed = Path(cfg.output_dir).exists()
        plan = launch_plan(cfg, set(merged))
        if cfg.dry_run:  # planned for the processes a run would launch (flags, else torchrun's variables)
            cfg.nproc_per_node, cfg.nnodes = plan["nproc_per_node"], plan["nnodes"]
        code = None if cfg.dry_run else relaunch([*argv, "--output_dir", cfg.output_dir], plan)
        if code is not None:
            if code != 0 and not existed:  # as one process cleans up (pipelines/sft.cleans_up_on_failure), once
                from ..pipelines.sft import remove_if_only_regenerable  # every process has stopped

                remove_if_only_regenerable(Path(cfg.output_dir))
            return code
        if args.command == "grpo":
            from ..pipelines.grpo import run_grpo

            run_grpo(cfg)
        else:
            from ..pipelines.sft import run_sft

            run_sft(cfg)
    elif args.command == "rollout":
        from ..pipelines.rollout import run_rollout

        run_rollout(cfg)
    elif args.command == "deploy":
        from ..pipelines.deploy import run_deploy

        run_deploy(cfg)
    elif args.command == "export":
        from ..pipelines.export import run_export

        run_export(cfg)
    elif args.command == "eval":
        from ..pipelines.eval import run_eval

        run_eval(cfg)
    elif args.command == "data":
        from ..pipelines.preview import run_preview

        run_preview(cfg)
    else:
        from ..pipelines.infer import run_infer

        run_infer(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    at = argv.index("--debug") if "--debug" in argv else -1
    _debug.update(on=at >= 0 and (argv[at + 1:at + 2] or ["true"])[0].lower() not in ("false", "0", "no"))
    try:
        code = _run(argv)
        sys.stdout.flush()  # a reader that went away (`wb env --json | head -1`) shows here, not at exit
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        _silence_stdout()
        code = 1
    except UserError as e:
        if _debug["on"]:
            raise
        say(f"wb: error: {e}")
        code = 2
    except KeyboardInterrupt:
        say("wb: interrupted")
        code = 130
    if __name__ == "__main__":
        sys.exit(code)
    return code


def _stdout_closed() -> bool:
    """Whether standard output is a pipe nobody reads any more (a BrokenPipeError can also come from a socket)."""
    try:
        import select

        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() (Windows) or no file descriptor: assume it is
        return True


def _silence_stdout() -> None:
    """What is still buffered for the closed pipe goes to devnull, so the flush at exit raises nothing
    (the recipe of Python's signal documentation, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        pass


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    main()
