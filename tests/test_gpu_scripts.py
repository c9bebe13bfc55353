"""The scripts a session lent a GPU runs (benchmarks/gpu_check.sh and benchmarks/gpu_sft.py) work before they reach
the card: device time is scarce (minutes a session), and a script that fails there loses it. Here, on the CPU:
every part of gpu_check.sh plans its steps (GPU_CHECK_DRY=1), and gpu_sft.py's smoke mode runs both sides on a tiny
model with the options the GPU runs use."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = {  # each part's steps, in order (env comes first in every part)
    "bench": ["env", "gpu_sft", "dpo", "grpo"],
    "tests": ["env", "gpu_tests", "suite"],
    "profile": ["env", "profile_4b_lora", "profile"],
    "grpo": ["env", "grpo_toy_static", "grpo_32_graph", "grpo_long_graph", "grpo_long_cudagraphs",
             "grpo_long_growing", "grpo_trl"],
    "core": ["env", "lora_4b_phases", "compiled_lora_8192"],
    "chunk": ["env", "chunk_4b_lora_16777216", "chunk_4b_lora_134217728", "chunk_0.6b_full_16777216",
              "chunk_0.6b_full_134217728"],
    "verify": ["env", "gpu_tests", "lora_4b_phases", "compiled_full_4b", "grpo_32_graph", "grpo_long_graph"],
    "long": ["env", "compiled_full_8192"],
    "suite": ["env", "suite"],
}


@pytest.mark.parametrize("part", PARTS)
def test_every_part_of_gpu_check_plans_its_steps(tmp_path, part):
    r = subprocess.run(["bash", "benchmarks/gpu_check.sh", part], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "GPU_CHECK_DRY": "1", "OUT": str(tmp_path / "out")}, timeout=60)
    assert r.returncode == 0, r.stderr
    steps = [line.split("]")[0].removeprefix("== [") for line in r.stdout.splitlines() if line.startswith("== [")]
    assert [s for s in steps if s != "install"] == PARTS[part], r.stdout
    assert "cap " in r.stdout and not r.stderr.strip()


def test_gpu_check_refuses_an_unknown_part():
    r = subprocess.run(["bash", "benchmarks/gpu_check.sh", "nonsense"], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "usage:" in r.stderr


@pytest.mark.slow
def test_gpu_sft_smoke_runs_both_sides_with_the_gpu_runs_options(tmp_path):
    """Ours with a chosen loss chunk (the `chunk` part's option) and TRL's side, LoRA and full, on the CPU; ours
    says where its steps' time goes."""
    out = tmp_path / "smoke.json"
    r = subprocess.run([sys.executable, "benchmarks/gpu_sft.py", "--smoke", "--logits_per_chunk", "134217728",
                        "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert sorted((run["side"], run["mode"]) for run in runs) == [("ours", "full"), ("ours", "lora"),
                                                                 ("trl", "full"), ("trl", "lora")]
    for run in runs:
        assert not run.get("error") and run["tokens_per_second"] > 0, run
        assert len(run["step_seconds"]) == run["steps_logged"] and min(run["step_seconds"]) > 0, run
        assert run.get("logits_per_chunk") == (134217728 if run["side"] == "ours" else None), run
        if run["side"] == "ours":  # where a step's time goes: the loss within forward and backward, the optimizer
            ms = run["phase_ms"]
            assert sorted(ms) == ["forward_backward", "loss", "optimizer"] and 0 < ms["loss"] < ms[
                "forward_backward"] and ms["optimizer"] > 0, ms


def test_the_suite_part_skips_what_an_earlier_call_passed(tmp_path):
    """SUITE_DONE: the tests an earlier call passed (its suite_done.txt) are handed to pytest as an @-file of
    --deselect lines, so a suite the time cap stopped goes on where it was."""
    done = tmp_path / "suite_done.txt"
    done.write_text("--deselect=tests/test_gpu_scripts.py::test_gpu_check_refuses_an_unknown_part\n")
    env = {**os.environ, "GPU_CHECK_DRY": "1", "OUT": str(tmp_path / "out")}
    r = subprocess.run(["bash", "benchmarks/gpu_check.sh", "suite"], cwd=REPO, capture_output=True, text=True,
                       env={**env, "SUITE_DONE": str(done)}, timeout=60)
    suite = next(line for line in r.stdout.splitlines() if line.startswith("== [suite]"))
    assert r.returncode == 0 and f"@{done} tests" in suite, r.stdout + r.stderr
    r = subprocess.run(["bash", "benchmarks/gpu_check.sh", "suite"], cwd=REPO, capture_output=True, text=True,
                       env={**env, "SUITE_DONE": str(tmp_path / "missing.txt")}, timeout=60)
    assert r.returncode == 0 and "no such file" in r.stderr and "@" not in r.stdout
