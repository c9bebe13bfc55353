"""Evaluation: what `wb eval` and eval-after-train measure.

metrics.py   answer extraction and per-row scores: math, choice, exact_match, f1, rouge (perplexity: run.py)
backends.py  where answers come from: a local model on the batched engine, or an OpenAI-compatible endpoint
run.py       one model on one dataset: scores, mean and standard error, per-row prediction records
evalscope_backend.py  EvalScope (in its own environment) on our rows against an OpenAI-compatible server
evalscope_task.py     the script that environment's interpreter runs (standard library and EvalScope only)
"""
