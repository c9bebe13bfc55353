"""`wb eval --eval_backend evalscope`: EvalScope (in its own environment, WB_EVALSCOPE_PYTHON; .ci/run builds
one) against the `wb deploy` server the command starts, its report read back. Free-form QA goes to EvalScope
as-is, so its predictions must be exactly the native backend's (same server engine, greedy)."""
import json
import os

import pytest

import swiftlike as wb
from swiftlike.cli.main import main

EVALSCOPE = os.environ.get("WB_EVALSCOPE_PYTHON")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not EVALSCOPE, reason="needs EvalScope's environment in WB_EVALSCOPE_PYTHON "
                                                       "(.ci/run creates it)")]


def test_evalscope_scores_a_trained_checkpoint_as_the_native_backend_answers(tmp_path):
    run = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["examples/data/identity.jsonl"], lora=True,
                 max_steps=30, output_dir=str(tmp_path / "run"))
    common = ["--adapters", run.checkpoint, "--eval_dataset", "examples/data/identity.jsonl", "--metric", "rouge",
              "--limit", "6", "--max_new_tokens", "24"]
    assert main(["eval", *common, "--output_dir", str(tmp_path / "native")]) == 0
    assert main(["eval", *common, "--eval_backend", "evalscope", "--output_dir", str(tmp_path / "scope")]) == 0
    result = json.loads((tmp_path / "scope" / "results.json").read_text())
    task = result["models"][0]["tasks"][0]
    assert task["metric"].startswith("evalscope:rouge") and task["n"] == 6 and task["score"] > 0.1
    native = [json.loads(line)["prediction"] for line in
              (tmp_path / "native" / "predictions" / "run_checkpoint-30" / "examples_data_identity.jsonl").read_text().splitlines()]
    scope_file = next((tmp_path / "scope" / "evalscope").glob("*/predictions/*/general_qa_swiftlike.jsonl"))
    records = sorted((json.loads(line) for line in scope_file.read_text().splitlines()), key=lambda r: r["index"])
    assert [r["model_output"]["choices"][0]["message"]["content"] for r in records] == native


def test_evalscope_multiple_choice_accuracy(tmp_path):
    assert main(["eval", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--eval_dataset", "mcq-demo", "--limit", "4",
                 "--max_new_tokens", "8", "--eval_backend", "evalscope", "--output_dir", str(tmp_path / "o")]) == 0
    task = json.loads((tmp_path / "o" / "results.json").read_text())["models"][0]["tasks"][0]
    assert task["metric"] == "evalscope:accuracy" and task["n"] == 4 and 0.0 <= task["score"] <= 1.0
    csv = (tmp_path / "o" / "data" / "general_mcq" / "swiftlike_val.csv").read_text().splitlines()
    assert csv[0] == "id,question,A,B,C,D,answer" and csv[1] == "0,What is 7 multiplied by 8?,54,64,56,48,C"
