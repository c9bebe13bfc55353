"""`wb env` and `wb models`."""
from __future__ import annotations

import json


def print_env(as_json: bool) -> int:
    import importlib.metadata as md

    from .. import __version__, accel

    report = accel.env_report()
    versions = {}
    for pkg in ("transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "deepspeed", "torch_npu"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    if as_json:
        print(json.dumps({"swiftlike": __version__, **report.__dict__, "packages": versions}, indent=2))
        return 0
    print(f"swiftlike      {__version__}")
    print("\n".join(report.lines()))
    for pkg, v in versions.items():
        print(f"{pkg:14s} {v or '-'}")
    return 0


def print_models(family: str | None) -> int:
    from ..registry import models

    rows = models(family)
    if not rows:
        from ..errors import UserError

        families = sorted({m.family for m in models()})
        raise UserError(f"no registered family {family!r}; families: {', '.join(families)}")
    width = max(len(m.model_id) for m in rows)
    print(f"{'model id':{width}s}  {'family':8s} {'model type':11s} template")
    for m in rows:
        print(f"{m.model_id:{width}s}  {m.family:8s} {m.model_type:11s} {m.template}")
    return 0


def print_datasets(task: str | None) -> int:
    from ..data.registry import DATASETS

    rows = [d for d in DATASETS.values() if task is None or d.task == task]
    width = max(len(d.name) for d in rows)
    print(f"{'name':{width}s}  {'task':10s} {'source':62s} description")
    for d in rows:
        source = d.source if "::" in d.source else f"(shipped) {d.source}"
        print(f"{d.name:{width}s}  {d.task:10s} {source:62s} {d.description}")
    return 0
