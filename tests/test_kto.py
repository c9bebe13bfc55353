"""wb kto: the loss equals TRL's KTO loss; training separates desirable from undesirable answers."""
import json
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

import swiftlike as wb
from swiftlike.data.dataset import load_rows
from swiftlike.data.pairs import KTOCollate, encode_kto
from swiftlike.errors import UserError
from swiftlike.templates import get_template
from swiftlike.train.dpo import kto_loss


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.33, 0.7)])
def test_kto_loss_matches_trl(weights):
    from trl import KTOTrainer

    g = torch.Generator().manual_seed(0)
    n, length = 6, 7
    per_token = -torch.rand((n, length - 1), generator=g) * 2
    mask = torch.zeros((n, length), dtype=torch.long)
    mask[:, 3:] = 1
    logps = (per_token * mask[:, 1:]).sum(1)
    ref = logps + torch.randn(n, generator=g) * 0.3
    kl_logps, ref_kl_logps = torch.randn(n, generator=g) - 20, torch.randn(n, generator=g) - 21
    labels = torch.tensor([True, False, True, True, False, False])
    accel = SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x)
    outputs = SimpleNamespace(log_probs=per_token * mask[:, 1:], entropy=torch.zeros_like(per_token),
                              mean_logits=torch.zeros_like(per_token), is_top1=torch.zeros_like(per_token).bool())
    fake = SimpleNamespace(model=SimpleNamespace(training=True), accelerator=accel, aux_loss_enabled=False,
                           calculate_KL=True, precompute_ref_logps=True, loss_type="kto", beta=0.1,
                           desirable_weight=weights[0], undesirable_weight=weights[1],
                           _compute_kl_logps=lambda model, batch: kl_logps,
                           _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    batch = {"input_ids": torch.zeros_like(mask), "attention_mask": torch.ones_like(mask), "completion_mask": mask,
             "label": labels, "ref_logps": ref, "ref_KL_logps": ref_kl_logps}
    trl_loss = KTOTrainer._compute_loss(fake, lambda **kw: outputs, batch, False)
    kl = (kl_logps - ref_kl_logps).mean().clamp(min=0)
    ours = kto_loss(logps, ref, labels, kl, 0.1, *weights).mean()
    torch.testing.assert_close(ours, trl_loss, rtol=1e-5, atol=1e-6)


def test_kto_batches_pair_prompts_with_other_answers(qwen3_tokenizer):
    template = get_template("qwen3", qwen3_tokenizer)
    examples, _ = encode_kto(load_rows(["kto-demo#4"], task="kto", seed=0), template, 512)
    batch = KTOCollate(template)(examples)
    assert int(batch["n_pairs"]) == 4 and len(batch["seq_lens"]) == 8
    assert batch["labels"].tolist() == [e["label"] for e in examples]
    with pytest.raises(UserError, match="needs both desirable"):
        encode_kto([{"messages": examples[0]["prompt"] + [examples[0]["answer"]], "label": True}], template, 512)


def test_kto_rows_keep_their_tools(qwen3_tokenizer):
    """The tools a row offers are part of its prompt (they were dropped: the answer trained without them), in the
    matched and in the mismatched (KL) sequences."""
    from swiftlike.data.formats import to_canonical

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    rows = [to_canonical({"prompt": f"q{i}", "completion": f"a{i}", "label": i == 0, "tools": tools}, "kto")
            for i in range(2)]
    assert rows[0]["tools"] == tools
    template = get_template("qwen3", qwen3_tokenizer)
    examples, _ = encode_kto(rows, template, 512)
    batch = KTOCollate(template)(examples)
    text = qwen3_tokenizer.decode(batch["input_ids"][0])
    assert text.count("get_weather") == 4  # 2 matched + 2 mismatched sequences


@pytest.mark.slow
def test_kto_separates_desirable_from_undesirable(tmp_path):
    result = wb.kto(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["kto-demo"], lora=True, learning_rate=1e-2,
                    max_steps=16, per_device_train_batch_size=6, logging_steps=1, output_dir=str(tmp_path))
    history = result.log_history
    assert history[0]["loss"] == pytest.approx(0.5, abs=1e-4)  # policy == reference: sigmoid(0) everywhere
    late = [h["rewards/margins"] for h in history[-4:] if "rewards/margins" in h]
    assert late and min(late) > 0.5
    assert result.metrics["final_loss"] < 0.35
    assert json.loads((tmp_path / "checkpoint-16" / "args.json").read_text())["task"] == "kto"
