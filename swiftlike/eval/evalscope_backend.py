"""The EvalScope backend: our evaluation rows written in EvalScope's local dataset layouts, EvalScope's task run
against an OpenAI-compatible server, and its report read back into our results.

    choice rows  -> general_mcq   {subset}_val.csv: id, question, A.., answer (letter); accuracy
    rouge rows   -> general_qa    {subset}.jsonl: query, response (, system); ROUGE-L (EvalScope's primary: recall)

EvalScope pins datasets<5 and huggingface_hub<2, which conflict with swiftlike's, so it runs in its own Python
environment: evalscope_task.py is executed by that environment's interpreter (--evalscope_python, or
$WB_EVALSCOPE_PYTHON, or this one when EvalScope imports here). Nothing is downloaded: `dataset_hub="local"` with
absolute paths (EvalScope would otherwise fall back to its hub when a local path is missing).
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from ..errors import UserError

SUBSET = "swiftlike"
KINDS = {"choice": "general_mcq", "rouge": "general_qa"}
INSTALL = ("EvalScope's dependencies (datasets<5, huggingface_hub<2) conflict with swiftlike's, so install it into "
           "its own environment: python -m venv ~/.evalscope && ~/.evalscope/bin/pip install 'evalscope>=1.14,<2', "
           "then give --evalscope_python ~/.evalscope/bin/python (or set WB_EVALSCOPE_PYTHON)")


def interpreter(given: str | None) -> str:
    """The Python that runs EvalScope, checked to import it."""
    python = given or os.environ.get("WB_EVALSCOPE_PYTHON")
    if not python:
        if importlib.util.find_spec("evalscope") is None:
            raise UserError(f"--eval_backend evalscope needs EvalScope. {INSTALL}")
        return sys.executable
    probe = subprocess.run([python, "-c", "import evalscope; print(evalscope.__version__)"], capture_output=True,
                           text=True)
    if probe.returncode != 0:
        raise UserError(f"--evalscope_python {python} cannot import evalscope. {INSTALL}")
    return python


def check_metric(metric: str, spec: str) -> str:
    if metric not in KINDS:
        raise UserError(f"--eval_backend evalscope: {spec} is scored with {metric}, which this backend does not run "
                        f"(it runs choice as general_mcq and rouge as general_qa); use --eval_backend native")
    return KINDS[metric]


def write_dataset(kind: str, raws: list[dict], directory: Path) -> Path:
    """Rows in EvalScope's local layout for `kind`, under `directory` (returned as the local_path)."""
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "general_mcq":
        width = max(len(r["choices"]) for r in raws)
        letters = "ABCDEFGHIJ"[:width]
        with open(directory / f"{SUBSET}_val.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "question", *letters, "answer"])
            for i, r in enumerate(raws):
                writer.writerow([i, r["question"], *r["choices"], *[""] * (width - len(r["choices"])), r["letter"]])
    else:
        with open(directory / f"{SUBSET}.jsonl", "w", encoding="utf-8") as f:
            for r in raws:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")  # query, response, system when the row has one
    return directory


def dataset_args(kind: str, local_path: Path) -> dict:
    args = {"local_path": str(local_path.resolve()), "subset_list": [SUBSET]}
    if kind == "general_qa":
        args["metric_list"] = ["Rouge"]  # its BLEU needs NLTK data downloaded at run time
    return args


def run(python: str, url: str, api_key: str, model: str, kinds: dict[str, Path], work_dir: Path, max_tokens: int,
        batch_size: int, limit: int | None) -> dict[str, dict]:
    """EvalScope on every dataset kind against the server; {kind: {score, n, metric}} from its reports."""
    work_dir.mkdir(parents=True, exist_ok=True)
    task = {"model": model, "api_url": url, "api_key": api_key, "datasets": list(kinds),
            "dataset_args": {k: dataset_args(k, p) for k, p in kinds.items()}, "mcq_english": True,
            "dataset_hub": "local", "eval_batch_size": batch_size, "limit": limit,
            "work_dir": str(work_dir.resolve()), "no_timestamp": True,
            "generation_config": {"max_tokens": max_tokens, "temperature": 0.0, "timeout": 600, "retries": 0}}
    (work_dir / "task.json").write_text(json.dumps(task, indent=2), encoding="utf-8")
    script = Path(__file__).with_name("evalscope_task.py")
    with open(work_dir / "evalscope.log", "w", encoding="utf-8") as log:
        done = subprocess.run([python, str(script), str((work_dir / "task.json").resolve())], stdout=log,
                              stderr=subprocess.STDOUT, cwd=work_dir)
    if done.returncode != 0:
        tail = (work_dir / "evalscope.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
        last = next((line for line in reversed(tail) if line.strip()), "no output")
        raise UserError(f"EvalScope failed (exit {done.returncode}): {last.strip()[:300]} (log: "
                        f"{work_dir / 'evalscope.log'})")
    return {kind: read_report(work_dir, kind) for kind in kinds}


def read_report(work_dir: Path, kind: str) -> dict:
    """The primary metric of EvalScope's report for one dataset."""
    reports = list((work_dir / "reports").glob(f"*/{kind}.json"))
    if not reports:
        raise UserError(f"EvalScope wrote no report for {kind} under {work_dir / 'reports'}")
    report = json.loads(reports[0].read_text(encoding="utf-8"))
    primary = report.get("primary_metric_identity")
    for metric in report.get("metrics", []):
        if primary is None or metric.get("identity") == primary:
            identity = metric.get("identity", {})
            name = identity.get("name", "score")
            variant = "-".join(str(v) for v in (identity.get("dimensions") or {}).values())
            return {"score": float(metric["score"]), "n": int(metric.get("num", 0)),
                    "metric": f"{name}{'-' + variant if variant else ''}"}
    raise UserError(f"{reports[0]}: no primary metric in EvalScope's report")
