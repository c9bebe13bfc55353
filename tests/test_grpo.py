"""`wb grpo` end to end: CLI, recipe, Python API with callables, a reward model, the server backend, resume,
and a learning check on a toy verifiable task."""
import collections
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import swiftlike as wb
from swiftlike.cli.main import main
from conftest import wb_cli

ROOT = Path(__file__).parents[1]
BASE = ["grpo", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--dataset", "arithmetic#16",
        "--num_generations", "4", "--per_device_train_batch_size", "8", "--max_completion_length", "8",
        "--torch_dtype", "float32"]  # fp32 on GPUs too: the checks below are exact


def _log(out: Path) -> list[dict]:
    state = json.loads((out / f"checkpoint-{_last_step(out)}" / "trainer_state.json").read_text())
    return state["log_history"]


def _last_step(out: Path) -> int:
    return max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))


def test_cli_run_writes_a_checkpoint_metrics_and_completions(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(BASE + ["--reward_funcs", "accuracy", "format", "length", "--max_steps", "2",
                        "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[wb] grpo: grpo loss, generation with transformers, rewards accuracy, format, length" in printed
    assert "2 prompts x 4 completions per generation batch" in printed
    ckpt = out / "checkpoint-2"
    assert (ckpt / "adapter_model.safetensors").is_file()
    args = json.loads((ckpt / "args.json").read_text())
    assert args["task"] == "grpo" and args["reward_funcs"] == ["accuracy", "format", "length"]
    assert "packing" not in args                                      # options of SFT that do not apply
    entry = _log(out)[-1]
    for key in ("reward", "reward_std", "frac_reward_zero_std", "rewards/accuracy/mean", "rewards/format/std",
                "rewards/length/mean", "advantages/abs_mean", "completions/mean_length", "completions/clipped_ratio",
                "clip_ratio/region", "time/generate", "time/train", "grad_norm", "loss"):
        assert key in entry, key
    lines = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 8 and {ln["step"] for ln in lines} == {h["step"] for h in _log(out) if "loss" in h} \
        == {1, 2}                                                    # numbered as the log lines are
    assert set(lines[0]["rewards"]) == {"accuracy", "format", "length"}
    assert lines[0]["prompt"].startswith("What is")
    # the checkpoint is an ordinary adapter: wb infer loads it
    assert main(["infer", "--adapters", str(ckpt), "--query", "What is 2 + 2?", "--max_new_tokens", "4"]) == 0


def test_recipe_runs(tmp_path):
    out = tmp_path / "recipe"
    assert main(["grpo", "--config", str(ROOT / "examples" / "grpo_arithmetic.yaml"), "--miniature",
                 "--max_steps", "1", "--max_completion_length", "8", "--dataset", "arithmetic#8",
                 "--output_dir", str(out)]) == 0
    entry = _log(out)[-1]
    assert "rewards/accuracy/mean" in entry and "rewards/format/mean" in entry
    args = json.loads((out / "args.json").read_text())
    assert args["loss_type"] == "dapo" and args["reward_weights"] == [1.0, 0.2]


def test_variants_with_kl_iterations_and_sequence_ratios(tmp_path):
    """beta > 0 (LoRA reference = adapter disabled), two optimizer steps per generation batch with stored
    sampling log-probs, GSPO's sequence-level ratio and DAPO's token-level loss in one run."""
    out = tmp_path / "variants"
    calls = []

    def count(completions, **_):
        calls.append(len(completions))
        return [float(len(c) % 3) for c in completions]

    r = wb.grpo(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["arithmetic#16"], reward_funcs=[count],
                num_generations=4, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                max_completion_length=8, beta=0.04, num_iterations=2, importance_sampling_level="sequence",
                loss_type="dapo", epsilon_high=0.28, learning_rate=1e-2, max_steps=4, output_dir=str(out))
    assert calls == [8, 8]                                            # 4 steps, 2 generation batches
    assert [h["time/generate"] > 0 for h in r.log_history] == [True, False, True, False]
    steps = [h for h in r.log_history if "kl" in h]
    assert len(steps) == 4 and all(h["kl"] >= 0 for h in steps)
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)             # the policy starts as the reference
    assert steps[1]["kl"] > 0                                         # ... and has moved after one update
    assert "trained_tokens" in r.metrics                              # dapo averages over tokens


def test_full_parameters_with_a_frozen_reference(tmp_path):
    """(Also the static KV cache, the CUDA default, run eagerly here: infer/static_cache.py.)"""
    r = wb.grpo(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["arithmetic#8"], reward_funcs=["length"],
                full=True, beta=0.1, num_generations=2, per_device_train_batch_size=4, max_completion_length=6,
                learning_rate=1e-3, max_steps=2, output_dir=str(tmp_path / "full"), loss_type="dr_grpo",
                scale_rewards="none", static_cache=True)
    assert (Path(r.checkpoint) / "model.safetensors").is_file()


def test_reward_from_a_file_and_weights(tmp_path):
    f = tmp_path / "rewards.py"
    f.write_text("def short(completions, completion_ids, **kw):\n"
                 "    return [-len(ids) / 8 for ids in completion_ids]\n")
    out = tmp_path / "file"
    assert main(BASE + ["--reward_funcs", f"{f}:short", "repetition", "--reward_weights", "2", "0.5",
                        "--max_steps", "1", "--output_dir", str(out)]) == 0
    entry = _log(out)[-1]
    assert entry["rewards/short/mean"] <= 0
    expected = 2 * entry["rewards/short/mean"] + 0.5 * entry["rewards/repetition/mean"]
    assert entry["reward"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_reward_model_as_a_reward(tmp_path):
    rm = wb.rm(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["preference-demo"], lora=True, max_steps=1,
               output_dir=str(tmp_path / "rm"))
    r = wb.grpo(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["arithmetic#8"], reward_model=rm.checkpoint,
                num_generations=2, per_device_train_batch_size=4, max_completion_length=6, max_steps=1,
                output_dir=str(tmp_path / "grpo"))
    entry = [h for h in r.log_history if "reward" in h][-1]
    assert "rewards/reward_model/mean" in entry and entry["rewards/reward_model/std"] > 0


def test_resume_continues_the_step_count(tmp_path, capsys):
    out = tmp_path / "resume"
    args = BASE + ["--reward_funcs", "length", "--save_steps", "1", "--output_dir", str(out)]
    assert main(args + ["--max_steps", "2"]) == 0
    assert main(args + ["--max_steps", "3", "--resume"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert _last_step(out) == 3
    assert [h["step"] for h in _log(out)] == [1, 2, 3]

    def logged_steps():
        return collections.Counter(json.loads(line)["step"] for line in (out / "completions.jsonl").open())

    per_step = logged_steps()[1]
    assert logged_steps() == {1: per_step, 2: per_step, 3: per_step}
    # a fresh start in the same directory: its own lines only (they were appended to the replaced run's)
    assert main(args + ["--max_steps", "1", "--overwrite_output_dir"]) == 0
    assert logged_steps() == {1: per_step}


def test_learning_a_verifiable_toy_task(tmp_path):
    """Reward: the share of completion tokens equal to a target token (the one the untrained model samples
    most often, so the task is reachable). With LoRA and a fixed seed the mean reward rises clearly."""
    target = {}

    def target_share(completion_ids, **_):
        if not target:
            counts = collections.Counter(t for ids in completion_ids for t in ids)
            target["id"] = counts.most_common(1)[0][0]
        return [sum(t == target["id"] for t in ids) / max(1, len(ids)) for ids in completion_ids]

    r = wb.grpo(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["arithmetic#16"], reward_funcs=[target_share],
                num_generations=8, per_device_train_batch_size=16, max_completion_length=8, temperature=0.3,
                learning_rate=1e-2, max_steps=20, lr_scheduler_type="constant", log_completions=False,
                torch_dtype="float32", output_dir=str(tmp_path / "learn"))  # (a GPU's default, bf16, stalls the toy)
    rewards = [h["reward"] for h in r.log_history if "reward" in h]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > 0.5 and last > 3 * first, rewards


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_server_backend_end_to_end(tmp_path):
    """`wb rollout` (transformers backend) serves the generations; the trainer syncs weights to it."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "swiftlike.cli.main", "rollout", "--model", "Qwen/Qwen3-0.6B",
                               "--miniature", "--backend", "transformers", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = server.stdout.readline()
        deadline = time.time() + 120
        while "serving" not in line and time.time() < deadline and server.poll() is None:
            line = server.stdout.readline()
        assert "with transformers on http://127.0.0.1:" in line, line
        out = tmp_path / "server"
        assert main(BASE + ["--reward_funcs", "length", "--use_vllm", "--vllm_mode", "server",
                            "--vllm_server_port", str(port), "--max_steps", "2", "--output_dir", str(out)]) == 0
        assert len(_log(out)) == 2
    finally:
        server.terminate()
        server.wait(30)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize("extra,message", [
    ([], "needs --reward_funcs"),
    (["--reward_funcs", "accuracy", "--num_generations", "3"], "must be a multiple of --num_generations"),
    (["--reward_funcs", "accuracy", "--reward_weights", "1", "2"], "2 values for 1 reward functions"),
    (["--reward_funcs", "acuracy"], "unknown reward function 'acuracy'"),
    (["--reward_funcs", "accuracy", "--reward_weights", "high"], "--reward_weights must be numbers"),
    (["--reward_funcs", "accuracy", "--packing"], "unknown flag --packing"),
    (["--reward_funcs", "accuracy", "--use_vllm"], "needs a CUDA GPU" if not _cuda() else "pip install vllm"),
    (["--reward_funcs", "accuracy", "--num_generations", "1"], "at least 2"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, extra, message):
    args = [a for a in BASE if a not in ("--num_generations", "4")] + ["--max_steps", "1",
                                                                      "--output_dir", str(tmp_path / "x")]
    if "--num_generations" not in extra:
        args += ["--num_generations", "4"]
    assert main(args + extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_accuracy_needs_a_solution_column(tmp_path, capsys):
    data = tmp_path / "q.jsonl"
    data.write_text('{"prompt": "What is 1 + 1?", "answer": "2"}\n' * 4)
    assert main(["grpo", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--dataset", str(data), "--reward_funcs",
                 "accuracy", "--num_generations", "2", "--per_device_train_batch_size", "4",
                 "--max_completion_length", "4", "--max_steps", "1", "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "`solution` column" in err and "answer" in err and "--columns" in err


def test_recipe_key_that_does_not_apply(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: Qwen/Qwen3-0.6B\ndataset: arithmetic\nreward_funcs: [accuracy]\npacking: true\n")
    assert main(["grpo", "--config", str(recipe)]) == 2
    assert "'packing' does not apply to this command" in capsys.readouterr().err


def test_long_prompts_are_dropped_and_counted(tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    rows = [{"prompt": "Say hi."}] * 4 + [{"prompt": "Say hi. " * 40}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["grpo", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--reward_funcs", "length", "--num_generations", "2",
            "--per_device_train_batch_size", "4", "--max_completion_length", "4", "--max_steps", "1"]
    assert main(args + ["--dataset", str(data), "--max_prompt_length", "64", "--output_dir", str(tmp_path / "a")]) == 0
    assert "4 prompts, dropped 1 (prompt longer than --max_prompt_length 64)" in capsys.readouterr().out
    assert main(args + ["--dataset", str(data), "--max_prompt_length", "4", "--output_dir", str(tmp_path / "b")]) == 2
    assert "no prompts left to train on; dropped 5 (prompt longer" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("cpu_processes")
def test_two_processes_share_the_prompts(tmp_path):
    """Each process samples and scores its own whole groups; metrics and batch-scaled advantages are global."""
    out = tmp_path / "ddp"
    f = tmp_path / "r.py"
    f.write_text("def rank_free(completions, completion_ids, **kw):\n"
                 "    return [float(ids[0] % 5) for ids in completion_ids]\n")
    proc = wb_cli(*BASE, "--reward_funcs", f"{f}:rank_free", "--scale_rewards", "batch", "--max_steps", "2",
                  "--nproc_per_node", "2", "--output_dir", str(out))
    assert "4 prompts x 4 completions per generation batch" in proc.stdout
    log = _log(out)
    assert [h["trained_completions"] for h in log] == [16, 32]          # 8 completions on each of 2 processes
    assert all(0 <= h["rewards/rank_free/mean"] <= 4 for h in log)
    lines = (out / "completions.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 8                                            # written by the first process only


def test_qlora_with_gradient_checkpointing_and_kl(tmp_path):
    pytest.importorskip("bitsandbytes")
    r = wb.grpo(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["arithmetic#8"], reward_funcs=["repetition"],
                qlora=True, gradient_checkpointing=True, beta=0.1, num_generations=2, per_device_train_batch_size=4,
                max_completion_length=6, max_steps=2, output_dir=str(tmp_path / "q"))
    assert (Path(r.checkpoint) / "adapter_model.safetensors").is_file()
    assert all("kl" in h for h in r.log_history)


def test_tool_calling_prompts_and_reward(tmp_path):
    """Rows with `tools`: the prompt shows the tools (template), and tool_call_valid scores against them."""
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                               "parameters": {"type": "object", "properties": {
                                                   "city": {"type": "string"}}}}}]
    data = tmp_path / "tools.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Weather in city {i}?"}],
                                        "tools": tools}) + "\n" for i in range(4)))
    seen = {}

    def spy(prompts, tools, **_):
        seen["tools"] = tools
        return [0.0] * len(prompts)

    r = wb.grpo(model="Qwen/Qwen3-0.6B", miniature=True, dataset=[str(data)], reward_funcs=["tool_call_valid", spy],
                num_generations=2, per_device_train_batch_size=4, max_completion_length=6, max_steps=1,
                output_dir=str(tmp_path / "t"))
    assert seen["tools"][0] == tools and len(seen["tools"]) == 4
    assert [h["rewards/tool_call_valid/mean"] for h in r.log_history] == [0.0]   # a random model calls no tool
    from swiftlike.pipelines.grpo import encode_prompts
    from swiftlike.data.dataset import DataStats
    from swiftlike.templates import get_template
    from swiftlike.models import load_tokenizer

    tok = load_tokenizer("Qwen/Qwen3-0.6B")
    row = encode_prompts([{"messages": [{"role": "user", "content": "Hi"}], "tools": tools}],
                         get_template("qwen3", tok), 512, DataStats())[0]
    assert "get_weather" in tok.decode(row["prompt_ids"]) and "<tools>" in tok.decode(row["prompt_ids"])


def test_validation_reward_is_logged(tmp_path):
    r = wb.grpo(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["arithmetic#20"], reward_funcs=["length", "format"],
                split_ratio=0.2, eval_steps=1, num_generations=2, per_device_train_batch_size=4,
                max_completion_length=6, max_steps=2, save_steps=1, output_dir=str(tmp_path / "v"))
    evals = [h for h in r.log_history if "eval_reward" in h]
    assert [h["step"] for h in evals] == [1, 2]
    best = 2 if evals[1]["eval_reward"] > evals[0]["eval_reward"] else 1  # the highest reward (ties: the first)
    assert r.best_checkpoint == str(tmp_path / "v" / f"checkpoint-{best}")
    assert evals[-1]["eval_rewards/length/mean"] == -1.0            # greedy, full-length completions
    assert "eval_completions/mean_length" in evals[-1] and r.metrics["eval_reward"] == evals[-1]["eval_reward"]


def test_greedy_sampling():
    from swiftlike.rollout import Sampling
    from swiftlike.rollout.hf import sample_next

    import torch

    assert sample_next(torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 1.0]]), Sampling(temperature=0)).tolist() == [1, 0]


@pytest.mark.slow
def test_sft_then_grpo_from_the_adapters(tmp_path):
    """The common chain: `wb sft` LoRA, then `wb grpo --adapters` trains those adapters further, with the SFT
    policy (not the bare base) as the KL reference; the checkpoint holds only the trained adapter."""
    from safetensors.torch import load_file

    sft = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["examples/data/identity.jsonl"], lora=True,
                 lora_rank=4, learning_rate=1e-2, max_steps=3, output_dir=str(tmp_path / "sft"))
    start = load_file(str(Path(sft.checkpoint) / "adapter_model.safetensors"))
    def varied(completion_ids, **_):  # differs within every group: the advantages are never all zero
        return [float(i % 2) for i in range(len(completion_ids))]

    r = wb.grpo(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["arithmetic#8"], adapters=sft.checkpoint,
                reward_funcs=[varied], beta=0.1, num_generations=2, per_device_train_batch_size=4,
                max_completion_length=6, learning_rate=1e-2, max_steps=2, output_dir=str(tmp_path / "grpo"))
    kls = [h["kl"] for h in r.log_history]
    assert kls[0] == pytest.approx(0.0, abs=1e-6)       # the reference is the SFT policy, not the base model
    assert kls[1] > 0                                    # ... and stays put while the adapters move
    ckpt = Path(r.checkpoint)
    assert not (ckpt / "ref").exists()
    trained = load_file(str(ckpt / "adapter_model.safetensors"))
    assert set(trained) == set(start)                   # the same adapters (rank 4 from the SFT run)
    assert any(not torch_equal(trained[k], start[k]) for k in start)
    assert main(["infer", "--adapters", str(ckpt), "--query", "Hi", "--max_new_tokens", "3"]) == 0


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def test_adapters_must_be_a_lora_checkpoint(tmp_path, capsys):
    assert main(BASE + ["--reward_funcs", "length", "--adapters", str(tmp_path), "--output_dir",
                        str(tmp_path / "o")]) == 2
    assert "no adapter_config.json there" in capsys.readouterr().err
