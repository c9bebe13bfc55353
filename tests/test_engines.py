"""Training under DeepSpeed ZeRO-2/3 and FSDP2 on CPU (gloo, two processes) equals one process with the same global
batch from the same weights; checkpoints are whole and load; resume equals an uninterrupted run; two "nodes" on
127.0.0.1; bad engine options are one-line errors. (docs/distributed.md)"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import STEP_LOG, logged_steps, wb_cli
from safetensors.torch import load_file

from swiftlike.errors import UserError
from swiftlike.train import engines

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.usefixtures("cpu_processes_module")

REPO = Path(__file__).resolve().parents[1]
IDENTITY = str(REPO / "examples" / "data" / "identity.jsonl")
PAIRS = str(REPO / "swiftlike" / "assets" / "datasets" / "preference_demo.jsonl")


def losses(r) -> list[float]:
    return [s["loss"] for s in logged_steps(r)]


def common(out: str, *extra: str, steps_: int = 3) -> list[str]:
    return ["--model", "Qwen/Qwen3-0.6B", "--miniature", "--max_steps", str(steps_), "--logging_steps", "1",
            "--lora_dropout", "0", "--output_dir", out, *extra]


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (ckpt / "adapter_model.safetensors").is_file() else "model.safetensors"
    return load_file(str(ckpt / name))


def assert_same_weights(a: Path, b: Path, atol: float = 1e-3) -> None:
    """Same names and shapes, values within `atol`: the miniature's learning rate is 1e-2, and Adam turns a
    gradient entry near zero that differs in its last bits (another summation order) into a step up to lr."""
    wa, wb_ = weights(a), weights(b)
    assert sorted(wa) == sorted(wb_)
    for k in wa:
        assert wb_[k].numel() > 0 and wb_[k].shape == wa[k].shape, k  # never an empty (unsharded) tensor
        assert torch.allclose(wa[k], wb_[k], atol=atol), (k, (wa[k] - wb_[k]).abs().max())


# -- configs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", engines.DEEPSPEED_PRESETS)
def test_every_auto_of_a_preset_is_filled_from_the_run(preset):
    raw = engines.deepspeed_config(preset)
    filled = engines.fill_deepspeed_config(raw, micro_batch=2, accumulation=3, max_grad_norm=0.5,
                                           dtype=torch.bfloat16, hidden_size=64)
    assert "auto" not in json.dumps(filled)
    assert filled["train_micro_batch_size_per_gpu"] == 2 and filled["gradient_accumulation_steps"] == 3
    assert filled["train_batch_size"] == 6 and filled["gradient_clipping"] == 0.5
    assert filled["bf16"]["enabled"] is True and filled["fp16"]["enabled"] is False
    assert filled["zero_optimization"]["reduce_bucket_size"] == 64 * 64
    assert engines.zero_stage(filled) == int(preset[4])


def test_explicit_values_must_agree_with_the_run(tmp_path):
    cfg = {"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 2}}
    with pytest.raises(UserError, match="train_micro_batch_size_per_gpu is 8 in the config but 2"):
        engines.fill_deepspeed_config(cfg, micro_batch=2, accumulation=1, max_grad_norm=1.0, dtype=torch.float32,
                                      hidden_size=64)
    with pytest.raises(UserError, match="bf16.enabled is True in the config but the run's dtype is float32"):
        engines.fill_deepspeed_config({"bf16": {"enabled": True}}, micro_batch=2, accumulation=1, max_grad_norm=1.0,
                                      dtype=torch.float32, hidden_size=64)
    with pytest.raises(UserError, match='zero_optimization.sub_group_size is "auto"'):
        engines.fill_deepspeed_config({"zero_optimization": {"stage": 3, "sub_group_size": "auto"}}, micro_batch=2,
                                      accumulation=1, max_grad_norm=1.0, dtype=torch.float32, hidden_size=64)


def _bad(tmp_path, *args) -> str:
    r = wb_cli("sft", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--dataset", IDENTITY, "--output_dir",
               str(tmp_path / "run"), *args, cwd=tmp_path, check=False)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()
    return lines[0]


def test_bad_engine_options_are_one_line_errors(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "own_optimizer.json").write_text(json.dumps({"optimizer": {"type": "AdamW"}}))
    (tmp_path / "offload2.json").write_text(json.dumps({"zero_optimization": {"stage": 2,
                                                                              "offload_param": {"device": "cpu"}}}))
    (tmp_path / "fsdp.json").write_text(json.dumps({"sharding": "full_shard", "mixed": True}))
    assert "choose one" in _bad(tmp_path, "--deepspeed", "zero2", "--fsdp", "full_shard")
    assert "zero1, zero2, zero3, zero2_offload, zero3_offload" in _bad(tmp_path, "--deepspeed", "zero4")
    assert "no such preset or file" in _bad(tmp_path, "--deepspeed", "missing.json")
    assert "not JSON" in _bad(tmp_path, "--deepspeed", "broken.json")
    assert "remove its 'optimizer' section" in _bad(tmp_path, "--deepspeed", "own_optimizer.json")
    assert "offload_param needs ZeRO stage 3" in _bad(tmp_path, "--deepspeed", "offload2.json")
    assert "--qlora under ZeRO-3" in _bad(tmp_path, "--qlora", "--deepspeed", "zero3")
    assert "--qlora under --fsdp" in _bad(tmp_path, "--qlora", "--fsdp", "full_shard")
    assert "full_shard, hybrid_shard, full_shard_offload" in _bad(tmp_path, "--fsdp", "sharded")
    assert "--optim paged_adamw_8bit under --fsdp is not supported" in \
        _bad(tmp_path, "--optim", "paged_adamw_8bit", "--fsdp", "full_shard")
    assert "offloaded optimizer states step with DeepSpeed's CPU Adam" in \
        _bad(tmp_path, "--optim", "adamw_8bit", "--deepspeed", "zero2_offload")
    assert "--adam_beta2 must be in [0, 1), got 1.0" in _bad(tmp_path, "--adam_beta2", "1")
    assert "unknown key 'mixed'" in _bad(tmp_path, "--fsdp", "fsdp.json")
    assert "--node_rank 2 is not below --nnodes 2" in _bad(tmp_path, "--nnodes", "2", "--node_rank", "2")
    (tmp_path / "stage_text.json").write_text(json.dumps({"zero_optimization": "3"}))  # (an AttributeError)
    assert "zero_optimization must be an object" in _bad(tmp_path, "--deepspeed", "stage_text.json")


@pytest.mark.slow
def test_a_checkpoint_resumed_under_another_engine_is_one_line(tmp_path):
    """A ZeRO-2 checkpoint resumed without an engine was an AttributeError, under ZeRO-3 DeepSpeed's bare
    AssertionError: each names the engine and number of processes the run trained with."""
    out = str(tmp_path / "run")
    wb_cli("sft", *common(out, "--dataset", IDENTITY, "--save_steps", "1", "--deepspeed", "zero2", steps_=2))
    __import__("shutil").rmtree(tmp_path / "run" / "checkpoint-2")
    for engine in ([], ["--deepspeed", "zero3"]):
        r = wb_cli("sft", *common(out, "--dataset", IDENTITY, "--resume", *engine, steps_=2), check=False)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert "(--deepspeed zero2, 1 process)" in r.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("engine", [["--fsdp", "full_shard"], ["--deepspeed", "zero3"]], ids=["fsdp", "zero3"])
def test_grpo_refuses_vllm_with_sharded_weights(tmp_path, engine):
    r = wb_cli("grpo", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--dataset", "arithmetic#4", "--reward_funcs",
               "accuracy", "--use_vllm", *engine, cwd=tmp_path, check=False)
    assert r.returncode == 2 and "use --deepspeed zero2, or drop --use_vllm" in r.stderr


def test_dry_run_plans_with_the_engine_stage(tmp_path):
    r = wb_cli("sft", "--model", "Qwen/Qwen3-8B", "--full", "--dry_run", "--deepspeed", "zero3", "--plan_devices", "8",
               cwd=tmp_path)
    plain = wb_cli("sft", "--model", "Qwen/Qwen3-8B", "--full", "--dry_run", "--plan_zero", "zero3", "--plan_devices",
                   "8", cwd=tmp_path)
    assert r.stdout == plain.stdout and "ZeRO-3 on 8 devices" in r.stdout


# -- two processes equal one ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, batch 2 x accumulation 2: the reference for two processes x batch 2 (LoRA and full)."""
    root = tmp_path_factory.mktemp("single")
    runs = {}
    for mode in ("lora", "full"):
        r = wb_cli("sft", *common(mode, f"--{mode}", "--dataset", IDENTITY, "--per_device_train_batch_size", "2",
                                  "--gradient_accumulation_steps", "2"), cwd=root)
        runs[mode] = (losses(r), root / mode / "checkpoint-3")
    return runs


ENGINES = [("lora", []), ("lora", ["--deepspeed", "zero2"]), ("lora", ["--deepspeed", "zero3"]),
           ("lora", ["--fsdp", "full_shard"]), ("full", ["--deepspeed", "zero3"]), ("full", ["--fsdp", "full_shard"]),
           ("lora", ["--fsdp", "hybrid_shard"]), ("full", ["--deepspeed", "zero3_offload"])]


@pytest.mark.slow
@pytest.mark.parametrize("mode,engine", ENGINES, ids=lambda v: "-".join(v) if isinstance(v, list) else v)
def test_sft_two_processes_equal_one(single, tmp_path, mode, engine):
    # ZeRO-2 runs batch 1 x accumulation 2 per rank: the engine's own accumulation is exercised too
    batch = ["--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "2"] if "zero2" in engine else \
        ["--per_device_train_batch_size", "2"]
    r = wb_cli("sft", *common("run", f"--{mode}", "--dataset", IDENTITY, "--nproc_per_node", "2", *batch, *engine),
               cwd=tmp_path)
    ref_losses, ref_ckpt = single[mode]
    assert losses(r) == pytest.approx(ref_losses, rel=2e-5)
    ckpt = tmp_path / "run" / "checkpoint-3"
    assert_same_weights(ref_ckpt, ckpt)
    assert not list(ckpt.glob("zero_to_*.py"))
    if engine in (["--deepspeed", "zero3"], ["--fsdp", "full_shard"]):  # what the engine saved loads as usual
        flag = "--adapters" if mode == "lora" else "--model"
        answer = wb_cli("infer", flag, str(ckpt), "--query", "Who are you?", "--max_new_tokens", "4", cwd=tmp_path)
        assert answer.stdout.strip()


@pytest.mark.slow
@pytest.mark.parametrize("mode,engine", [("full", ["--fsdp", "full_shard", "--gradient_checkpointing"]),
                                         ("lora", ["--deepspeed", "zero2"])],
                         ids=["full-fsdp-checkpointed", "lora-zero2"])
def test_compiled_layers_under_an_engine_train_as_one_eager_process(single, tmp_path, mode, engine):
    """--torch_compile under FSDP2 (its hooks gather and free each compiled layer's weights around its call; with
    activation checkpointing inside the compiled function, backward gathers them again to recompute) and ZeRO-2: the
    losses and weights follow one eager process's (not checkpointed), and no layer gives up compiling (torch says so
    when its recompile limit is hit, as it is under ZeRO-3, which is refused)."""
    r = wb_cli("sft", *common("run", f"--{mode}", "--dataset", IDENTITY, "--nproc_per_node", "2",
                              "--per_device_train_batch_size", "2", "--torch_compile", *engine), cwd=tmp_path)
    assert "2 decoder layers compiled" in r.stdout
    assert "recompile_limit" not in r.stdout + r.stderr
    ref_losses, ref_ckpt = single[mode]
    assert losses(r)[0] == pytest.approx(ref_losses[0], rel=1e-5)
    assert losses(r) == pytest.approx(ref_losses, rel=2e-3) and len(ref_losses) == 3
    assert_same_weights(ref_ckpt, tmp_path / "run" / "checkpoint-3")


@pytest.mark.slow
@pytest.mark.parametrize("mode,engine,reference", [
    ("lora", ["--deepspeed", "zero3"], []), ("full", ["--fsdp", "full_shard"], []),
    # the reference log-probs computed once up front, outside a training step, through the engine
    ("lora", ["--deepspeed", "zero3"], ["--precompute_ref_logps"]),
    ("full", ["--fsdp", "full_shard"], ["--precompute_ref_logps"])],
    ids=["lora-zero3", "full-fsdp", "lora-zero3-precomputed", "full-fsdp-precomputed"])
def test_dpo_two_processes_equal_one(tmp_path, mode, engine, reference):
    args = ["--dataset", PAIRS, f"--{mode}", *reference]
    one = wb_cli("dpo", *common("one", *args, "--per_device_train_batch_size", "2", "--gradient_accumulation_steps",
                                "2", steps_=2), cwd=tmp_path)
    two = wb_cli("dpo", *common("two", *args, "--per_device_train_batch_size", "2", "--nproc_per_node", "2", *engine,
                                steps_=2), cwd=tmp_path)
    assert losses(two) == pytest.approx(losses(one), rel=2e-5) and len(losses(one)) == 2
    assert_same_weights(tmp_path / "one" / "checkpoint-2", tmp_path / "two" / "checkpoint-2")


@pytest.mark.slow
@pytest.mark.parametrize("command,data,engine", [
    ("pt", str(REPO / "tests" / "data" / "c4_sample.jsonl"), ["--fsdp", "full_shard"]),
    ("kto", str(REPO / "swiftlike" / "assets" / "datasets" / "kto_demo.jsonl"), ["--deepspeed", "zero3"]),
    ("rm", PAIRS, ["--deepspeed", "zero2"])], ids=["pt-fsdp", "kto-zero3", "rm-zero2"])
def test_other_commands_two_processes_equal_one(tmp_path, command, data, engine):
    args = ["--dataset", data, "--lora", "--per_device_train_batch_size", "2", "--max_length", "256"]
    one = wb_cli(command, *common("one", *args, "--gradient_accumulation_steps", "2", steps_=2), cwd=tmp_path)
    two = wb_cli(command, *common("two", *args, "--nproc_per_node", "2", *engine, steps_=2), cwd=tmp_path)
    assert losses(two) == pytest.approx(losses(one), rel=2e-5) and len(losses(one)) == 2
    assert_same_weights(tmp_path / "one" / "checkpoint-2", tmp_path / "two" / "checkpoint-2")


@pytest.mark.slow
def test_qlora_under_zero2_equals_one_process(tmp_path):
    pytest.importorskip("bitsandbytes")
    args = ["--dataset", IDENTITY, "--qlora", "--per_device_train_batch_size", "2"]
    one = wb_cli("sft", *common("one", *args, "--gradient_accumulation_steps", "2", steps_=2), cwd=tmp_path)
    two = wb_cli("sft", *common("two", *args, "--nproc_per_node", "2", "--deepspeed", "zero2", steps_=2), cwd=tmp_path)
    assert losses(two) == pytest.approx(losses(one), rel=2e-5) and len(losses(one)) == 2
    assert_same_weights(tmp_path / "one" / "checkpoint-2", tmp_path / "two" / "checkpoint-2")


@pytest.mark.slow
def test_bf16_lora_under_zero2_saves_the_fp32_master(tmp_path):
    """DeepSpeed's bf16 module holds rounded copies of the adapters; the checkpoint has the optimizer's fp32 master,
    as one process saves them (the copies were saved before)."""
    args = ["--dataset", IDENTITY, "--torch_dtype", "bfloat16", "--per_device_train_batch_size", "2"]
    wb_cli("sft", *common("one", *args, "--gradient_accumulation_steps", "2", steps_=2), cwd=tmp_path)
    wb_cli("sft", *common("two", *args, "--nproc_per_node", "2", "--deepspeed", "zero2", steps_=2), cwd=tmp_path)
    two = weights(tmp_path / "two" / "checkpoint-2")
    assert {v.dtype for v in two.values()} == {torch.float32}
    assert any((v != v.bfloat16().float()).any() for v in two.values())  # not bf16 values widened
    assert_same_weights(tmp_path / "one" / "checkpoint-2", tmp_path / "two" / "checkpoint-2", atol=2e-2)


@pytest.mark.slow
@pytest.mark.parametrize("engine", [["--deepspeed", "zero2"], ["--fsdp", "full_shard"],
                                    ["--deepspeed", "zero3", "--full", "--optim", "adamw_8bit"],
                                    ["--fsdp", "full_shard", "--full", "--optim", "adamw_8bit"]],
                         ids=["zero2", "fsdp", "zero3-full-adamw_8bit", "fsdp-full-adamw_8bit"])
def test_resume_equals_an_uninterrupted_run(tmp_path, engine):
    """(--optim adamw_8bit: torchao's quantized moments; under ZeRO-3 of the fp32 partitions, in DeepSpeed's own
    optimizer checkpoint; under FSDP2 of each rank's shards, saved by each rank.)"""
    args = ["--dataset", IDENTITY, "--per_device_train_batch_size", "2", "--nproc_per_node", "2", "--save_steps",
            "2", *engine]
    straight = wb_cli("sft", *common("straight", *args, steps_=4), cwd=tmp_path)
    import shutil

    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoint-4")
    resumed = wb_cli("sft", *common("resumed", *args, "--resume", steps_=4), cwd=tmp_path)
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert losses(resumed) == pytest.approx(losses(straight)[2:], rel=1e-6)
    assert_same_weights(tmp_path / "straight" / "checkpoint-4", tmp_path / "resumed" / "checkpoint-4", atol=1e-6)
    if "adamw_8bit" in engine:  # the moments were quantized (not kept in fp32 for want of whole blocks)
        __import__("torchao.optim")  # (registers its 8-bit state as safe to load)
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum

        states = sorted((tmp_path / "straight" / "checkpoint-2").glob("**/*.pt"))
        with torch.serialization.safe_globals([ZeroStageEnum, LossScaler]):  # (what DeepSpeed's own file holds)
            assert any(_has_uint8(torch.load(f, weights_only=True, map_location="cpu")) for f in states
                       if "optim" in str(f))


def _has_uint8(state) -> bool:
    """Whether an optimizer state (DeepSpeed's, or one FSDP rank's) holds quantized moments: bitsandbytes' uint8
    states, or torchao's 8-bit subclass (its codes)."""
    if torch.is_tensor(state):
        return state.dtype == torch.uint8 or getattr(state, "codes", torch.empty(0)).dtype == torch.uint8
    values = state.values() if isinstance(state, dict) else state if isinstance(state, (list, tuple)) else ()
    return any(_has_uint8(v) for v in values)


@pytest.fixture(scope="module")
def grpo_ddp(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    (root / "reward.py").write_text("def chars(completions, **kw):\n"
                                    "    return [float(len(c) % 7) for c in completions]\n")
    # two iterations over one generation batch: the sampling policy's and the reference's log-probs are computed
    # outside a training step (through the engine), and step 2 trains on step 1's completions
    args = ["--dataset", "arithmetic#16", "--reward_funcs", f"{root / 'reward.py'}:chars", "--num_generations",
            "2", "--max_completion_length", "8", "--per_device_train_batch_size", "2", "--nproc_per_node", "2",
            "--beta", "0.04", "--num_iterations", "2"]
    return args, logged_steps(wb_cli("grpo", *common("ddp", *args, steps_=2), cwd=root))


@pytest.mark.slow
@pytest.mark.parametrize("engine", [["--fsdp", "full_shard"], ["--deepspeed", "zero3"]], ids=["fsdp", "zero3"])
def test_grpo_under_a_sharded_engine_equals_ddp(grpo_ddp, tmp_path, engine):
    args, ddp = grpo_ddp
    sharded = logged_steps(wb_cli("grpo", *common("run", *args, *engine, steps_=2), cwd=tmp_path))
    assert len(sharded) == 2 and sharded[0]["reward_std"] > 0  # rewards differ: a real gradient
    for i in (0, 1):
        for key in ("loss", "reward", "grad_norm", "kl"):
            assert sharded[i][key] == pytest.approx(ddp[i][key], rel=1e-4, abs=1e-6), (i, key)


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _try_out(out: Path) -> list[str]:
    """Flags that turn examples/cluster/recipe.yaml (Qwen3-8B, 8 GPUs a node) into a miniature try-out here."""
    return ["--model", "Qwen/Qwen3-0.6B", "--miniature", "--nproc_per_node", "1", "--max_steps", "3",
            "--logging_steps", "1", "--output_dir", str(out), "--learning_rate", "1e-3"]


def _env(**extra: str) -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra}


@pytest.mark.slow
def test_two_nodes_script_equals_one_process(tmp_path):
    """examples/cluster/two_nodes.sh, run once per "node" on 127.0.0.1 (ZeRO-3, full, as the recipe says)."""
    env = _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=_free_port())
    procs = [subprocess.Popen(["bash", "examples/cluster/two_nodes.sh", *_try_out(tmp_path / "run")], cwd=REPO,
                              env={**env, "NODE_RANK": str(rank)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for rank in (0, 1)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "on node 0 of 2" in outputs[0] and "on node 1 of 2" in outputs[1]
    assert "engine deepspeed zero3" in outputs[0]
    # one process with the same global batch: 2 nodes x batch 2 x accumulation 4 = batch 2 x accumulation 8
    one = wb_cli("sft", "--config", "examples/cluster/recipe.yaml", *_try_out(tmp_path / "one"),
                 "--gradient_accumulation_steps", "8", "--deepspeed", "zero2", cwd=REPO)
    assert [json.loads(m)["loss"] for m in STEP_LOG.findall(outputs[0])] == pytest.approx(losses(one), rel=2e-5)
    assert_same_weights(tmp_path / "one" / "checkpoint-3", tmp_path / "run" / "checkpoint-3")


@pytest.mark.slow
def test_slurm_script_runs_under_a_stand_in_srun(tmp_path):
    """examples/cluster/slurm.sh with stand-ins for srun (every task started here, SLURM_NODEID set) and
    scontrol (the first host is 127.0.0.1): what Slurm itself does is not tested."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "srun").write_text("#!/usr/bin/env bash\nwhile [[ $1 == --* ]]; do shift; done\npids=()\n"
                               "for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i \"$@\" & pids+=($!); done\n"
                               "rc=0; for p in \"${pids[@]}\"; do wait \"$p\" || rc=1; done; exit $rc\n")
    (bin_ / "scontrol").write_text("#!/usr/bin/env bash\necho 127.0.0.1\n")
    for tool in bin_.iterdir():
        tool.chmod(0o755)
    env = _env(PATH=f"{bin_}:{Path(sys.executable).parent}:{os.environ['PATH']}", SLURM_JOB_NODELIST="node[1-2]",
               SLURM_NNODES="2", MASTER_PORT=_free_port())
    r = subprocess.run(["bash", "examples/cluster/slurm.sh", *_try_out(tmp_path / "run"), "--max_steps", "2"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "on node 1 of 2" in r.stderr and (tmp_path / "run" / "checkpoint-2" / "model.safetensors").is_file()


@pytest.mark.slow
def test_rows_dropped_while_streaming_are_counted_over_every_process(tmp_path):
    """--streaming with two processes: each encodes (and drops) only its own rows. The report once gave the
    first process's count alone; it equals one process's with the same global batch."""
    args = ["--dataset", IDENTITY, "--streaming", "--max_length", "40", "--max_steps", "4"]
    one = wb_cli("sft", *common("one", *args, "--per_device_train_batch_size", "2"), cwd=tmp_path)
    two = wb_cli("sft", *common("two", *args, "--per_device_train_batch_size", "1", "--nproc_per_node", "2"),
                 cwd=tmp_path)
    line = [x for x in one.stdout.splitlines() if x.startswith("[wb] data: dropped while training")]
    assert line and line == [x for x in two.stdout.splitlines() if x.startswith("[wb] data: dropped while training")]
    trained = [[s.get("loss") for s in logged_steps(r)] for r in (one, two)]  # (a step of dropped rows: none)
    assert None in trained[0] and [x is None for x in trained[1]] == [x is None for x in trained[0]]
    assert [x for x in trained[1] if x] == pytest.approx([x for x in trained[0] if x], rel=2e-5)


@pytest.mark.slow
def test_a_streamed_text_split_into_many_micro_batches_steps_once(tmp_path):
    """--streaming with --truncation_strategy split: a long text's pieces make more micro-batches than
    --gradient_accumulation_steps (Trainer.next_batches). DeepSpeed once counted each as a step of its own (14
    optimizer steps for 2); under ZeRO-2, and with two processes under ZeRO-3 (the process with fewer pieces runs
    empty micro-batches to match), the losses and gradient norms equal one plain process's."""
    args = ["--dataset", str(REPO / "tests" / "data" / "c4_sample.jsonl"), "--streaming", "--max_length", "128",
            "--lora_dropout", "0"]
    plain = wb_cli("pt", *common("plain", *args, "--per_device_train_batch_size", "2", steps_=2), cwd=tmp_path)
    zero2 = wb_cli("pt", *common("zero2", *args, "--per_device_train_batch_size", "2", "--deepspeed", "zero2",
                                 steps_=2), cwd=tmp_path)
    two = wb_cli("pt", *common("two", *args, "--per_device_train_batch_size", "1", "--nproc_per_node", "2",
                               "--deepspeed", "zero3", steps_=2), cwd=tmp_path)
    expected = [x for s in logged_steps(plain) for x in (s["loss"], s["grad_norm"])]
    assert len(expected) == 4 and logged_steps(plain)[-1]["trained_tokens"] > 4 * 2 * 128  # (many pieces)
    for run in (zero2, two):
        assert [x for s in logged_steps(run) for x in (s["loss"], s["grad_norm"])] == pytest.approx(expected, rel=1e-3)


@pytest.mark.slow
def test_validation_and_eval_after_train_under_zero3_with_two_processes(tmp_path):
    """5 validation rows in batches of 2 are 3 batches: the process with fewer once left the loop while the
    other waited in a sharded forward (a hang, under FSDP too); --eval_after_train then loaded its models on the
    main process inside ZeRO-3's partitioned construction, which waited for the other process (a crash)."""
    r = wb_cli("sft", *common("run", "--dataset", IDENTITY, "--per_device_train_batch_size", "2", "--split_ratio",
                              "0.125", "--nproc_per_node", "2", "--deepspeed", "zero3", "--eval_after_train",
                              "--eval_dataset", "mcq-demo", "--eval_limit", "2", "--eval_max_new_tokens", "2",
                              steps_=2), cwd=tmp_path, timeout=400)
    assert "eval_loss" in r.stdout + r.stderr and (tmp_path / "run" / "eval" / "results.json").is_file()


@pytest.mark.slow
def test_a_run_failing_in_its_processes_is_cleaned_up_once_all_have_stopped(tmp_path):
    """Two processes failing on the same option: the first removed the run directory (and the miniature's
    base_model in it) while the second still read it, which then said "cannot get '.../base_model' from
    huggingface". Now the launching `wb` removes it once every process has stopped."""
    (tmp_path / "gas.json").write_text(json.dumps({"zero_optimization": {"stage": 3},
                                                   "gradient_accumulation_steps": 4}))
    r = wb_cli("sft", *common("run", "--dataset", IDENTITY, "--deepspeed", "gas.json", "--nproc_per_node", "2",
                              steps_=1), cwd=tmp_path, check=False)
    assert r.returncode != 0 and "gradient_accumulation_steps" in r.stderr
    assert "base_model" not in r.stderr and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_validation_metrics_with_a_process_that_has_no_batch(tmp_path):
    """2 validation pairs in batches of 2 over two processes: the second runs an uncounted forward, whose metric
    names it must still sum with the first's (it summed none, and both waited on different collectives)."""
    (tmp_path / "val.jsonl").write_text("".join(open(PAIRS).readlines()[:2]))
    r = wb_cli("dpo", *common("run", "--dataset", PAIRS, "--val_dataset", "val.jsonl", "--per_device_train_batch_size",
                              "2", "--nproc_per_node", "2", steps_=1), cwd=tmp_path, timeout=300)
    assert "eval_loss" in r.stdout + r.stderr


# -- how several processes end ---------------------------------------------------------------------------------
def test_an_error_in_the_workers_is_said_once_without_torchrun_s_report(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    r = wb_cli("sft", *common("run", "--dataset", str(bad), "--nproc_per_node", "2"), cwd=tmp_path, check=False)
    assert r.returncode == 2  # the workers' status (torchrun's was 1)
    said = [line for line in r.stderr.splitlines() if line.startswith("wb: ")]
    assert said == [f"wb: error: {bad}:1: no assistant turn to train on"]  # (each rank printed it)
    assert "Traceback" not in r.stderr and "ChildFailedError" not in r.stderr and "exitcode" not in r.stderr
    assert "OMP_NUM_THREADS" not in r.stderr  # (torchrun's banner)


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_stop_every_process(tmp_path, sig):
    """The launching `wb` gets the signal (Ctrl-C reaches the terminal's process group; a scheduler's SIGTERM the
    process it started) and passes it to torchrun once; the workers finish the step, agree to stop at it and save
    it (they were killed, SIGTERM left them running), nothing is left running."""
    import signal
    import time

    cmd = [sys.executable, "-m", "swiftlike.cli.main", "sft", *common(str(tmp_path / "run"), "--dataset", IDENTITY,
                                                                       "--save_steps", "5", "--nproc_per_node", "2",
                                                                       steps_=100000)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not (tmp_path / "run" / "checkpoint-5").is_dir() and time.monotonic() < deadline:
        time.sleep(0.5)
    if sig == "SIGINT":
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C
    else:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    workers = subprocess.run(["pgrep", "-f", f"--output_dir {tmp_path / 'run'}"], capture_output=True, text=True)
    assert workers.stdout == ""  # no worker or torchrun left behind
    assert "Traceback" not in err and "SignalException" not in err
    stopped = re.search(r"\[wb\] stopped at step (\d+) of 100000; --resume continues from (\S+)", out)
    assert stopped and Path(stopped[2]).name == f"checkpoint-{stopped[1]}", out[-2000:]
    assert (tmp_path / "run" / f"checkpoint-{stopped[1]}" / "adapter_model.safetensors").is_file()
    assert err.count("[wb] interrupt: finishing this step") == 1  # (rank 0 says it; `wb` passes SIGTERM as SIGINT)
    said = [line for line in err.splitlines() if line.startswith("wb: ")]
    if sig == "SIGINT":
        assert proc.returncode == 130 and said == ["wb: interrupted"], err[-2000:]
    else:
        assert proc.returncode == 128 + signal.SIGTERM and said == ["wb: stopped by SIGTERM"], err[-2000:]


def test_a_second_signal_kills_torchrun_and_its_workers(tmp_path):
    """Each worker leads a session of its own: killing torchrun alone left them running."""
    import signal
    import time

    from swiftlike.cli.launch import _kill_all

    pids = tmp_path / "pids"
    code = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'],"
            f" start_new_session=True); open({str(pids)!r}, 'w').write(str(c.pid)); time.sleep(300)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    while not pids.exists() or not pids.read_text():
        time.sleep(0.1)
    worker = int(pids.read_text())
    _kill_all(proc)
    proc.wait(timeout=10)
    for _ in range(100):
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        if open(f"/proc/{worker}/stat").read().split()[2] == "Z":  # (dead, not yet reaped by init)
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        raise AssertionError("the worker outlived torchrun")


def test_processes_that_cannot_meet_are_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "swiftlike.cli.launch", "--nproc_per_node=2",
                            f"--master_port={port}", "-m", "swiftlike.cli.main", "env"], capture_output=True,
                           text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("wb: error: the processes could not meet (--master_addr")
