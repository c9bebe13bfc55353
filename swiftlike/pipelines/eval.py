"""`wb eval`: score models (a model, LoRA checkpoints, their base, an export, or an OpenAI-compatible endpoint)
on evaluation datasets with the metrics of swiftlike/eval/, and write what was measured:

    OUTPUT_DIR/results.json                       settings, and per model its identity and per dataset
                                                  {dataset, metric, score, stderr, n}
    OUTPUT_DIR/predictions/<model>/<dataset>.jsonl  one line per row: prompt, prediction, extracted answer,
                                                  reference, score (correct)

results.json is rewritten as each model finishes; a run that stops early (an endpoint gone, Ctrl-C) keeps the
rows already answered in <dataset>.partial.jsonl.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import accel
from ..config import EvalConfig
from ..errors import UserError
from ..train.checkpoint import write_atomic


@dataclass
class Candidate:
    """One model to evaluate, loaded only when its turn comes."""
    label: str
    model: str = ""
    adapters: str | None = None
    template: str | None = None
    miniature: bool = False


def candidates(cfg: EvalConfig) -> list[Candidate]:
    if cfg.api_url:
        return []
    if not cfg.adapters:
        return [Candidate(_label(cfg.model), cfg.model, None, cfg.template, cfg.miniature)]
    out = []
    if cfg.with_base:
        out.append(Candidate("base", cfg.model, None, cfg.template, cfg.miniature) if cfg.model else
                   base_candidate(cfg.adapters[0], cfg.template))
    labels = _unique([_label(path) for path in cfg.adapters])
    out += [Candidate(label, cfg.model, path, cfg.template, cfg.miniature) for label, path in zip(labels, cfg.adapters)]
    return out


def base_candidate(checkpoint: str, template: str | None = None) -> Candidate:
    from ..models.resolve import trained_from

    ref = trained_from(checkpoint, template)
    return Candidate("base", ref.base, None, ref.template)


def _label(path: str) -> str:
    """A short, readable name: runs/x/checkpoint-30 -> x/checkpoint-30, Qwen/Qwen3-8B -> Qwen3-8B."""
    parts = Path(path.rstrip("/")).parts or (path,)
    return "/".join(parts[-2:]) if parts[-1].startswith("checkpoint") else parts[-1]


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def _slug(text: str) -> str:
    """A file name for a model label or dataset spec: examples/data/qa.jsonl#50 -> examples_data_qa_50."""
    text = re.sub(r"\.(jsonl|json|csv|parquet)(?=#|$)", "", text)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "dataset"


def dataset_tasks(cfg: EvalConfig) -> list[tuple[str, str]]:
    """(dataset spec, metric) for every --eval_dataset; refused before any model is loaded."""
    from ..config import EVAL_METRICS
    from ..data.dataset import parse_selection
    from ..data.registry import lookup

    out = []
    for spec in cfg.eval_dataset:
        source, _ = parse_selection(spec)
        meta = None if Path(source).exists() else lookup(source)
        metric = cfg.metric or (meta.metric if meta else None)
        if not metric:
            raise UserError(f"--eval_dataset {spec}: give --metric ({', '.join(EVAL_METRICS)}); only named datasets "
                            "carry a default")
        if metric == "perplexity" and cfg.api_url:
            raise UserError("--metric perplexity needs the model's probabilities: evaluate a local model, not "
                            "--api_url")
        out.append((spec, metric))
    return out


def read_eval_rows(spec: str, cfg: EvalConfig) -> list:
    from ..eval.run import check_references
    from ..infer.prompts import read_prompts

    rows = read_prompts([spec], None, cfg.seed)[: cfg.limit]
    check_references(rows)
    return rows


def run_eval(cfg: EvalConfig, models: list[Candidate] | None = None) -> dict:
    """Evaluate every candidate (default: the ones `cfg` names) on every dataset; print one table; return the
    results (as written to results.json)."""
    if cfg.eval_backend == "evalscope":
        return run_evalscope(cfg)
    from ..models.loader import quiet_libraries

    quiet_libraries()
    accel.seed_everything(cfg.seed)
    tasks = dataset_tasks(cfg)
    rows = {spec: read_eval_rows(spec, cfg) for spec, metric in tasks if metric != "perplexity"}
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {"settings": _settings(cfg), "models": []}
    if cfg.api_url:
        from ..eval.backends import ApiBackend

        backend = ApiBackend(cfg.api_url, cfg.api_key, cfg.api_model, cfg.eval_batch_size)
        results["models"].append(_evaluate_backend(backend, None, tasks, rows, cfg, out))
    for cand in candidates(cfg) if models is None else models:
        _write_json(out / "results.json", results)  # the models done so far, should a later one fail
        results["models"].append(_evaluate_local(cand, tasks, rows, cfg, out))
    _write_json(out / "results.json", results)
    print(table(results), flush=True)
    print(f"[wb] eval: results in {out / 'results.json'}, predictions in {out / 'predictions'}", flush=True)
    return results


def _load(cand: Candidate, cfg: EvalConfig):
    """(model, tokenizer, template, identity) of a candidate; reward models refused."""
    from ..models.resolve import load_for_inference

    model, tokenizer, template = load_for_inference(cand.model, cand.adapters, cand.miniature, cfg.torch_dtype,
                                                    cfg.hub, cand.template, cfg.trust_remote_code,
                                                    cfg.attn_implementation)
    if getattr(model, "swiftlike_task", "sft") == "rm":
        raise UserError(f"{cand.adapters or cand.model} is a reward model: it scores answers, it does not write "
                        "them (evaluate it with `wb infer --query --response`)")
    print(f"[wb] eval: {cand.label} ({cand.adapters or cand.model}, template {template.name})", file=sys.stderr,
          flush=True)
    return model, tokenizer, template, {"model": cand.model or None, "adapters": cand.adapters,
                                        "template": template.name}


def _evaluate_local(cand: Candidate, tasks, rows, cfg: EvalConfig, out: Path) -> dict:
    from ..eval.backends import LocalBackend
    from ..infer.engine import TransformersEngine

    model, tokenizer, template, identity = _load(cand, cfg)
    with TransformersEngine(model, tokenizer, template, max_batch_size=cfg.eval_batch_size) as engine:
        backend = LocalBackend(engine, cand.label, identity)
        result = _evaluate_backend(backend, (model, template), tasks, rows, cfg, out)
    del model, engine
    accel.empty_cache()
    return result


def run_evalscope(cfg: EvalConfig) -> dict:
    """--eval_backend evalscope: EvalScope against the endpoint (--api_url), or against a `wb deploy` server this
    command starts on 127.0.0.1 for each local model and stops afterwards."""
    import secrets

    from ..eval import evalscope_backend as evalscope
    from ..eval.backends import ApiBackend

    out = Path(cfg.output_dir)
    chosen = {}
    for spec, metric in dataset_tasks(cfg):
        kind = evalscope.check_metric(metric, spec)
        if kind in chosen:
            raise UserError(f"--eval_backend evalscope: one {metric} dataset per run ({chosen[kind]} and {spec})")
        chosen[kind] = spec
    python = evalscope.interpreter(cfg.evalscope_python)
    kinds = {kind: (spec, evalscope.write_dataset(kind, _evalscope_rows(kind, read_eval_rows(spec, cfg)),
                                                  out / "data" / kind)) for kind, spec in chosen.items()}
    results = {"settings": {**_settings(cfg), "eval_backend": "evalscope"}, "models": []}

    def evaluate(url: str, key: str | None, model: str, label: str, identity: dict) -> None:
        scores = evalscope.run(python, url, key, model, {k: v[1] for k, v in kinds.items()},
                               out / "evalscope" / _slug(label), cfg.max_new_tokens, cfg.eval_batch_size, cfg.limit)
        tasks = [{"dataset": kinds[k][0], "metric": f"evalscope:{s['metric']}", "score": s["score"],
                  "stderr": None, "n": s["n"]} for k, s in scores.items()]
        results["models"].append({"label": label, "identity": identity, "tasks": tasks})

    if cfg.api_url:
        api = ApiBackend(cfg.api_url, cfg.api_key, cfg.api_model, cfg.eval_batch_size)
        evaluate(api.url, cfg.api_key, api.model, api.label, api.identity)
    for cand in candidates(cfg):
        from ..infer.engine import TransformersEngine
        from ..serve import ServeSettings, create_app
        from ..serve.server import BackgroundServer

        model, tokenizer, template, identity = _load(cand, cfg)
        key = secrets.token_hex(16)  # the server lives as long as the evaluation, for EvalScope alone
        with TransformersEngine(model, tokenizer, template, max_batch_size=cfg.eval_batch_size) as engine:
            settings = ServeSettings(model_name=_slug(cand.label), max_model_len=engine.max_model_len or 32768,
                                     api_key=key, max_tokens_limit=cfg.max_new_tokens, max_request_bytes=1 << 24)
            served = engine.default_model if cand.adapters else settings.model_name  # the adapters, not the base
            with BackgroundServer(create_app(engine, settings)) as server:
                evaluate(server.url + "/v1", key, served, cand.label, identity)
        del model, engine
        accel.empty_cache()
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "results.json", results)
    print(table(results), flush=True)
    print(f"[wb] eval: results in {out / 'results.json'}, EvalScope's reports under {out / 'evalscope'}", flush=True)
    return results


def _evalscope_rows(kind: str, rows: list) -> list[dict]:
    from ..data.formats import RowError, multiple_choice

    out = []
    for row in rows:
        if kind == "general_mcq":
            try:
                _, letter = multiple_choice(row.raw)
            except (KeyError, RowError):
                raise UserError(f"{row.key}: --eval_backend evalscope runs multiple choice from question/choices/"
                                "answer rows (MMLU layout)") from None
            out.append({"question": row.raw["question"], "choices": row.raw["choices"], "letter": letter})
        else:
            users = [m for m in row.messages if m["role"] != "system"]
            if len(users) != 1 or row.tools:
                raise UserError(f"{row.key}: --eval_backend evalscope's general_qa takes one question per row "
                                "(no multi-turn prompts, no tools)")
            system = [m["content"] for m in row.messages if m["role"] == "system"]
            out.append({"query": users[0]["content"], "response": row.reference["content"],
                        **({"system": system[0]} if system else {})})
    return out


def _evaluate_backend(backend, local, tasks, rows, cfg: EvalConfig, out: Path) -> dict:
    from ..eval.backends import Generation

    gen = Generation(cfg.max_new_tokens, cfg.temperature, cfg.seed, cfg.enable_thinking)
    entry = {"label": backend.label, "identity": backend.identity, "tasks": []}
    for spec, metric in tasks:
        path = out / "predictions" / _slug(backend.label) / f"{_slug(spec)}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        if metric == "perplexity":
            result = _perplexity(local, spec, cfg)
        else:
            result = _answered(rows[spec], backend, metric, gen, spec, path.with_suffix(".partial.jsonl"))
        entry["tasks"].append(result.summary())
        write_atomic(path, "".join(_line(p) for p in result.predictions))
    return entry


def _line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def _answered(rows, backend, metric: str, gen, spec: str, partial: Path):
    """`evaluate`, each scored row appended to `partial` as it comes (removed once the dataset is done): a run
    that stops early keeps what it had answered."""
    from tqdm.auto import tqdm

    from ..eval.run import evaluate

    kept = 0
    with open(partial, "w", encoding="utf-8") as fh:
        def keep(record: dict) -> None:
            nonlocal kept
            fh.write(_line(record))
            fh.flush()
            kept += 1

        try:
            with tqdm(total=len(rows), desc=f"eval {backend.label} {spec}", unit="row") as bar:
                result = evaluate(rows, backend, metric, gen, spec, bar, keep)
        except BaseException:
            if kept:
                print(f"[wb] eval: stopped; the {kept} rows of {spec} answered so far are in {partial}",
                      file=sys.stderr, flush=True)
            else:
                partial.unlink()
            raise
    partial.unlink()
    return result


def _perplexity(local, spec: str, cfg: EvalConfig):
    from ..data.dataset import NoRowsLeft, encode_rows, load_rows
    from ..eval.run import evaluate_perplexity
    from ..templates.text import TextTemplate

    model, template = local
    sources: list[str] = []
    try:
        data = load_rows([spec], sources, seed=cfg.seed, task="sft")
    except UserError as chat_error:
        try:
            data = load_rows([spec], sources, seed=cfg.seed, task="pt")
        except UserError:
            raise chat_error from None
        template = TextTemplate(template.tokenizer)
    data, sources = data[: cfg.limit], sources[: cfg.limit]
    measured, keys, unmeasured = [], [], []
    for row, key in zip(data, sources):  # a row at a time: each result stays with its own row's key
        try:  # cut from the left: a long prompt loses its start, never the reference measured
            (enc,), _ = encode_rows([row], template, cfg.max_length, [key], truncation_strategy="left")
        except NoRowsLeft:
            unmeasured.append(key)
            continue
        measured.append(enc)
        keys.append(key)
    if unmeasured:
        print(f"[wb] eval: {spec}: {len(unmeasured)} of {len(data)} rows have no reference tokens to measure "
              f"(an empty answer, or images over --max_length), left out: {', '.join(unmeasured[:5])}"
              f"{' ...' if len(unmeasured) > 5 else ''}", file=sys.stderr, flush=True)
    if not measured:
        raise UserError(f"--eval_dataset {spec}: no reference tokens to measure perplexity on")
    return evaluate_perplexity(model, measured, spec, keys)


def _settings(cfg: EvalConfig) -> dict:
    from .. import __version__

    keys = ("eval_dataset", "metric", "limit", "seed", "eval_batch_size", "max_new_tokens", "temperature",
            "enable_thinking", "torch_dtype", "max_length")
    return {**{k: getattr(cfg, k) for k in keys}, "swiftlike": __version__}


def _write_json(path: Path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def table(results: dict) -> str:
    """Models as rows, datasets as columns (score ± standard error); with several models, each one's difference
    from the first."""
    models = results["models"]
    columns = [(t["dataset"], t["metric"]) for t in models[0]["tasks"]] if models else []
    header = ["model"] + [f"{d} ({m})" for d, m in columns]
    lines = [header]
    first = {(t["dataset"], t["metric"]): t["score"] for t in models[0]["tasks"]} if models else {}
    for i, entry in enumerate(models):
        cells = [entry["label"]]
        for t in entry["tasks"]:
            stderr = f" ± {t['stderr']:.4f}" if t.get("stderr") is not None else ""
            cell = f"{t['score']:.4f}{stderr} (n={t['n']})"
            if i and len(models) > 1:
                cell += f" [{t['score'] - first[(t['dataset'], t['metric'])]:+.4f}]"
            cells.append(cell)
        lines.append(cells)
    widths = [max(len(row[c]) for row in lines) for c in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in lines)


def after_training(cfg):
    """--eval_after_train: a function of the final checkpoint that scores it and the base model it was trained
    from on --eval_dataset (results in <output_dir>/eval) and returns the scores to log. The datasets and metrics
    are checked now, before any training."""
    if not cfg.eval_after_train:
        return None
    ecfg = EvalConfig(model=cfg.model, eval_dataset=list(cfg.eval_dataset), metric=cfg.eval_metric,
                      limit=cfg.eval_limit, max_new_tokens=cfg.eval_max_new_tokens, seed=cfg.seed,
                      torch_dtype=cfg.torch_dtype, hub=cfg.hub, trust_remote_code=cfg.trust_remote_code,
                      enable_thinking=getattr(cfg, "enable_thinking", None),
                      output_dir=str(Path(cfg.output_dir) / "eval")).validate()
    for spec, metric in dataset_tasks(ecfg):
        if metric != "perplexity":
            read_eval_rows(spec, ecfg)

    def evaluate_checkpoint(checkpoint) -> dict:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

        if is_deepspeed_zero3_enabled():  # (training is over: the models scored here load whole, in this process)
            unset_hf_deepspeed_config()
        checkpoint = str(checkpoint)
        lora = (Path(checkpoint) / "adapter_config.json").is_file()
        final = Candidate(_label(checkpoint), "" if lora else checkpoint, checkpoint if lora else None)
        print(f"[wb] eval after training: {final.label} and its base on {', '.join(ecfg.eval_dataset)}",
              flush=True)
        results = run_eval(ecfg, [base_candidate(checkpoint), final])
        scores = {}
        for prefix, entry in zip(("eval_base", "eval"), results["models"]):
            for t in entry["tasks"]:
                scores[f"{prefix}/{t['dataset']}/{t['metric']}"] = t["score"]
        return scores

    return evaluate_checkpoint
