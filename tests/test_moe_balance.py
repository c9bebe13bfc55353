"""The MoE load-balancing loss: our loss equals transformers' own (cross-entropy + router_aux_loss_coef x aux_loss)
with its gradients, whether the batch is padded or packed; it is off unless the model's config or
--router_aux_loss_coef asks for it; evaluation and reference passes leave it out; SFT, DPO and KTO log it."""
import json

import pytest
import torch

import swiftlike as wb
from swiftlike.data.collate import collate_padded, collate_padding_free
from swiftlike.errors import UserError
from swiftlike.models import build_miniature
from swiftlike.templates import IGNORE_INDEX
from swiftlike.train import moe_balance
from swiftlike.train.dpo import PreferenceObjective
from swiftlike.train.loss import CausalLMLoss

MOE = "Qwen/Qwen3-30B-A3B"


def _rows():
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in (7, 12, 5):
        ids = torch.randint(0, 5000, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * 2 + ids[2:]})
    return rows


def _transformers_loss(model, rows, coef):
    """transformers' own training loss of the padded batch: mean cross-entropy + coef x load-balancing loss."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in rows])
    labels = torch.tensor([r["labels"] + [IGNORE_INDEX] * (width - len(r["labels"])) for r in rows])
    mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
    model.router_aux_loss_coef = coef
    return model(input_ids=ids, attention_mask=mask, labels=labels, output_router_logits=True).loss


@pytest.mark.parametrize("collate", ["padded", "packed"])
def test_loss_and_gradients_equal_transformers_own(collate):
    model = build_miniature(MOE)
    rows, coef = _rows(), 0.05
    ref = _transformers_loss(model, rows, coef)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    batch = collate_padded(rows, pad_id=0) if collate == "padded" else collate_padding_free(rows)
    total, tokens, metrics = CausalLMLoss(model, router_aux_coef=coef)(**batch)
    (total / tokens).backward()
    torch.testing.assert_close(total / tokens, ref, rtol=1e-5, atol=1e-5)
    router = "model.layers.0.mlp.gate.weight"
    assert ref_grads[router].abs().sum() > 0
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # the term is what moves the loss off plain cross-entropy, and is logged per token
    plain, _, none = CausalLMLoss(model)(**batch)
    assert none == {} and metrics["aux_loss"] / float(tokens) > 1
    torch.testing.assert_close(float(total - plain), coef * metrics["aux_loss"], rtol=1e-4, atol=1e-6)


def test_evaluation_leaves_it_out():
    model = build_miniature(MOE)
    batch = collate_padding_free(_rows())
    with torch.no_grad():
        weighted = CausalLMLoss(model, router_aux_coef=0.05)(**batch)
        plain = CausalLMLoss(model)(**batch)
    assert weighted[2] == {} and torch.equal(weighted[0], plain[0])


def test_the_default_follows_the_models_config():
    model = build_miniature(MOE)
    assert moe_balance.router_aux_coefficient(None, model, MOE) == 0.0  # transformers' default: off
    assert "off" in moe_balance.describe(0.0, model) and "0.001" in moe_balance.describe(0.0, model)
    model.config.output_router_logits = True
    assert moe_balance.router_aux_coefficient(None, model, MOE) == 0.001  # the config's own coefficient
    assert moe_balance.router_aux_coefficient(0.0, model, MOE) == 0.0  # the flag wins
    assert "0.02 x aux_loss" in moe_balance.describe(0.02, model)
    dense = build_miniature("Qwen/Qwen3-0.6B")
    assert moe_balance.router_aux_coefficient(None, dense, "Qwen/Qwen3-0.6B") == 0.0
    assert moe_balance.describe(0.0, dense) is None
    with pytest.raises(UserError, match="Qwen3-0.6B \\(qwen3\\) has no mixture-of-experts load-balancing loss"):
        moe_balance.router_aux_coefficient(0.01, dense, "Qwen/Qwen3-0.6B")


def test_dpo_adds_it_for_the_policy_only():
    model = build_miniature(MOE)
    batch = collate_padding_free(_rows()[:2] + _rows()[:2])
    batch["n_pairs"] = torch.tensor(2)
    batch["ref_logps"] = torch.zeros(4)
    torch.manual_seed(0)
    weighted, n, metrics = PreferenceObjective(model, "sigmoid", 0.1, router_aux_coef=0.1)(**batch)
    plain, _, none = PreferenceObjective(model, "sigmoid", 0.1)(**batch)
    assert "aux_loss" not in none
    torch.testing.assert_close(float(weighted - plain), 0.1 * metrics["aux_loss"], rtol=1e-4, atol=1e-6)
    assert metrics["aux_loss"] / 2 > 1


def _logged(path, key):
    return [e[key] for e in json.loads((path / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
            if key in e]


@pytest.mark.parametrize("command", ["sft", "dpo", "kto"])
def test_runs_log_aux_loss(command, tmp_path, capsys):
    data = {"sft": "examples/data/identity.jsonl", "dpo": "swiftlike/assets/datasets/preference_demo.jsonl",
            "kto": "swiftlike/assets/datasets/kto_demo.jsonl"}[command]
    getattr(wb, command)(model=MOE, miniature=True, dataset=[data], max_steps=2, logging_steps=1,
                         per_device_train_batch_size=2, router_aux_loss_coef=0.01, output_dir=str(tmp_path))
    assert "[wb] MoE load-balancing loss: 0.01 x aux_loss" in capsys.readouterr().out
    assert len(_logged(tmp_path, "aux_loss")) == 2 and all(v > 1 for v in _logged(tmp_path, "aux_loss"))
    assert json.loads((tmp_path / "checkpoint-2" / "args.json").read_text())["router_aux_loss_coef"] == 0.01


def test_refusals(tmp_path):
    with pytest.raises(UserError, match="has no mixture-of-experts load-balancing loss"):
        wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["examples/data/identity.jsonl"], max_steps=1,
               router_aux_loss_coef=0.01, output_dir=str(tmp_path))
    with pytest.raises(UserError, match="--router_aux_loss_coef must be 0 or more"):
        wb.sft(model=MOE, miniature=True, dataset=["examples/data/identity.jsonl"], router_aux_loss_coef=-1,
               output_dir=str(tmp_path))
    with pytest.raises(UserError, match="router_aux_loss_coef"):
        wb.rm(model=MOE, miniature=True, dataset=["swiftlike/assets/datasets/preference_demo.jsonl"],
              router_aux_loss_coef=0.01, output_dir=str(tmp_path))
