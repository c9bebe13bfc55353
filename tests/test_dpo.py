"""wb dpo end to end: learning, masks, reference handling, bad input."""
import json
import math

import pytest
import torch

import swiftlike as wb
from swiftlike.cli.main import main
from swiftlike.data.dataset import load_rows
from swiftlike.data.pairs import collate_pairs, encode_pairs
from swiftlike.models import build_miniature
from swiftlike.templates import get_template
from swiftlike.train.dpo import PreferenceObjective
from conftest import wb_cli

BASE = dict(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["preference-demo"], logging_steps=1,
            torch_dtype="float32")  # equivalence checks need fp32 (auto picks bf16 on GPUs)


def test_only_completion_tokens_are_scored(qwen3_tokenizer):
    rows = load_rows(["preference-demo#2"], task="preference")
    pairs, _ = encode_pairs(rows, get_template("qwen3", qwen3_tokenizer), 512)
    model = build_miniature("Qwen/Qwen3-0.6B").eval()
    objective = PreferenceObjective(model, "simpo", beta=2.0)
    batch = collate_pairs(pairs)
    sums, counts, _ = objective._sequence_logps(objective.policy, batch["input_ids"], batch["targets"],
                                             batch["position_ids"], batch["seq_lens"])
    for k, enc in enumerate([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]):
        ids = torch.tensor([enc["input_ids"]])
        logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        labels = enc["labels"][1:]
        scored = [i for i, lab in enumerate(labels) if lab != -100]
        text = qwen3_tokenizer.decode([labels[i] for i in scored])
        assert text.endswith("<|im_end|>") and "<|im_start|>user" not in text  # the completion only
        expected = sum(logps[i, labels[i]] for i in scored)
        torch.testing.assert_close(sums[k], expected, rtol=1e-4, atol=1e-4)
        assert int(counts[k]) == len(scored)


@pytest.mark.slow
def test_a_frozen_reference_stays_in_eval_mode():
    """The trainer puts its loss module in train mode every step: the full run's frozen reference followed, and a
    model with dropout scored the same pair differently each time (and unlike --precompute_ref_logps). GRPO's KL
    reference too."""
    from swiftlike.train.dpo import KTOObjective
    from swiftlike.train.grpo import GRPOObjective

    mini = "Qwen/Qwen3-0.6B"
    for objective in (PreferenceObjective(build_miniature(mini), "sigmoid", 0.1, ref_model=build_miniature(mini)),
                      KTOObjective(build_miniature(mini), 0.1, ref_model=build_miniature(mini)),
                      GRPOObjective(build_miniature(mini), beta=0.04, ref_model=build_miniature(mini))):
        objective.train()
        assert objective.policy.training and not any(m.training for m in objective.ref.modules())


def test_dpo_lora_raises_margins_and_accuracy(tmp_path):
    result = wb.dpo(**BASE, lora=True, learning_rate=1e-2, max_steps=20, per_device_train_batch_size=4,
                    output_dir=str(tmp_path))
    history = result.log_history
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at the start
    assert history[-1]["rewards/margins"] > history[0]["rewards/margins"] + 1.0
    assert history[-1]["rewards/accuracies"] >= 0.75
    assert result.metrics["trained_pairs"] == 80


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "orpo", "simpo"])
def test_full_runs_with_frozen_reference_or_none(tmp_path, loss_type):
    result = wb.dpo(**BASE, full=True, loss_type=loss_type, learning_rate=1e-3, max_steps=6,
                    per_device_train_batch_size=4, output_dir=str(tmp_path))
    history = result.log_history
    if loss_type in ("sigmoid", "ipo"):  # reference-based: the frozen copy equals the policy at step 1
        assert history[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert history[-1]["rewards/margins"] > history[0]["rewards/margins"]
    args = json.loads((tmp_path / "checkpoint-6" / "args.json").read_text())
    assert args["task"] == "dpo" and args["loss_type"] == loss_type


def test_bad_preference_input(tmp_path, capsys):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n"
                 + json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    argv = ["dpo", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--dataset", str(p), "--output_dir", str(tmp_path / "o")]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == \
        f"wb: error: {p}:2: no 'rejected', 'rejected_response' or 'rejected_messages' (fields: chosen, prompt)"
    assert main(argv[:-2] + ["--packing", "--output_dir", str(tmp_path / "o2")]) == 2
    assert "--packing" in capsys.readouterr().err
    assert main(argv[:-2] + ["--max_length", "8", "--skip_bad_rows", "--output_dir", str(tmp_path / "o3")]) == 2
    assert "no pairs left to train on" in capsys.readouterr().err
    # accepted once and wrong: the prompt scored (--loss_scope all), rows cut nowhere (--truncation_strategy)
    assert main(argv[:-2] + ["--loss_scope", "all", "--output_dir", str(tmp_path / "o4")]) == 2
    assert "--loss_scope all (which would score the prompt too) does not apply" in capsys.readouterr().err
    assert main(argv[:-2] + ["--truncation_strategy", "left", "--output_dir", str(tmp_path / "o5")]) == 2
    assert "--truncation_strategy left does not apply" in capsys.readouterr().err
    # a rejected answer without its chosen one was blamed on 'rejected_response'
    p.write_text(json.dumps({"prompt": "q", "rejected": "b"}) + "\n")
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == \
        f"wb: error: {p}:1: 'rejected' without 'chosen' (fields: prompt, rejected)"
    # a row the template refuses (Gemma-2 has no system role) is named, and skipped with --skip_bad_rows
    p.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n"
                 + json.dumps({"system": "s", "prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    gemma = ["dpo", "--model", "google/gemma-2-2b-it", "--miniature", "--dataset", str(p), "--max_steps", "1"]
    assert main(gemma + ["--output_dir", str(tmp_path / "o6")]) == 2
    assert capsys.readouterr().err.strip().startswith(f"wb: error: {p}:2: ")
    assert main(gemma + ["--skip_bad_rows", "--output_dir", str(tmp_path / "o7")]) == 0
    assert "dropped 1 (rejected by the template" in capsys.readouterr().out


@pytest.mark.slow
def test_precomputed_reference_matches_the_live_one(tmp_path):
    common = dict(BASE, full=True, learning_rate=1e-3, max_steps=4, per_device_train_batch_size=4)
    live = wb.dpo(**common, output_dir=str(tmp_path / "live"))
    pre = wb.dpo(**common, precompute_ref_logps=True, output_dir=str(tmp_path / "pre"))
    for a, b in zip(live.log_history, pre.log_history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], rel=1e-3, abs=1e-4)


@pytest.mark.slow
@pytest.mark.usefixtures("cpu_processes")
def test_two_process_dpo_matches_one_process(tmp_path):
    flags = ["--model", "Qwen/Qwen3-0.6B", "--miniature", "--dataset", "preference-demo", "--lora", "--lora_dropout",
             "0", "--learning_rate", "1e-2", "--max_steps", "3", "--logging_steps", "1"]
    wb_cli("dpo", *flags, "--nproc_per_node", "2", "--per_device_train_batch_size", "2", "--output_dir",
           str(tmp_path / "two"), OMP_NUM_THREADS="1")
    one = wb.dpo(**BASE, lora=True, lora_dropout=0.0, learning_rate=1e-2, max_steps=3, per_device_train_batch_size=4,
                 output_dir=str(tmp_path / "one"))
    two_history = json.loads((tmp_path / "two" / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    for a, b in zip(two_history, one.log_history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], rel=1e-3, abs=1e-5)


@pytest.mark.slow
def test_dpo_from_sft_adapters_uses_them_as_reference(tmp_path):
    sft = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["examples/data/identity.jsonl"], lora=True,
                 learning_rate=1e-2, max_steps=3, output_dir=str(tmp_path / "sft"))
    result = wb.dpo(**BASE, adapters=sft.checkpoint, lora_dropout=0.0, learning_rate=1e-2, max_steps=3,
                    per_device_train_batch_size=4, output_dir=str(tmp_path / "dpo"))
    history = result.log_history
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)   # policy == reference (the SFT adapters)
    assert history[-1]["rewards/margins"] != 0
