"""GRPO losses and advantages.

The loss of every variant equals TRL's GRPOTrainer._compute_loss on the same log-probs, old log-probs,
advantages and masks (within 1e-6): TRL's method is called on a stand-in trainer whose model returns the
given per-token log-probs. Advantages are checked against hand-computed groups.
"""
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from swiftlike.train.grpo import (GRPOObjective, group_advantages, pad_by_sequence, per_token_loss, reduce_loss)

B, T, MAX_LEN = 6, 7, 10


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand((B, T), generator=g, dtype=torch.float64) * 3
    old = logps + torch.randn((B, T), generator=g, dtype=torch.float64) * 0.3   # some ratios leave the clip range
    ref = logps + torch.randn((B, T), generator=g, dtype=torch.float64) * 0.2
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    mask = torch.zeros((B, T), dtype=torch.float64)
    for i, n in enumerate([7, 3, 5, 1, 6, 4]):
        mask[i, :n] = 1                                   # completion tokens first, padding after
    return logps, old, ref, adv, mask


def _trl_loss(loss_type, level, beta, eps_low, eps_high, logps, old, ref, adv, mask, accum=1):
    from trl import GRPOTrainer

    reduce = lambda x, reduction="sum": x  # noqa: E731  (one process)
    accel = SimpleNamespace(num_processes=1, gather=lambda x: x, gather_for_metrics=lambda x: x, reduce=reduce,
                            sync_gradients=True)
    fake = SimpleNamespace(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level, beta=beta,
        loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=accum),
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=accum,
        max_completion_length=MAX_LEN, accelerator=accel, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics={"train": defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None))
    inputs = {"prompt_ids": torch.zeros((B, 1), dtype=torch.long), "prompt_mask": torch.ones((B, 1)),
              "completion_ids": torch.zeros((B, T), dtype=torch.long), "completion_mask": mask,
              "advantages": adv, "old_per_token_logps": old, "num_items_in_batch": mask.sum()}
    if beta:
        inputs["ref_per_token_logps"] = ref
    return GRPOTrainer._compute_loss(fake, None, inputs)


def _ours(loss_type, level, beta, eps_low, eps_high, logps, old, ref, adv, mask):
    loss, _, _ = per_token_loss(logps, old, adv, mask, epsilon_low=eps_low, epsilon_high=eps_high, beta=beta,
                                ref_logps=ref, importance_sampling_level=level)
    total = reduce_loss(loss, mask, loss_type, MAX_LEN)
    weight = mask.sum() if loss_type == "dapo" else B   # what the trainer divides by (GRPOObjective.weight)
    return total / weight


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_equals_trl(loss_type, level, beta):
    logps, old, ref, adv, mask = _inputs()
    eps_low, eps_high = 0.2, 0.28
    theirs = _trl_loss(loss_type, level, beta, eps_low, eps_high, logps, old, ref, adv, mask)
    ours = _ours(loss_type, level, beta, eps_low, eps_high, logps, old, ref, adv, mask)
    assert abs(float(ours) - float(theirs)) < 1e-6, (float(ours), float(theirs))


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_gradients_equal_trl(loss_type):
    """Same loss value is not enough: the gradient with respect to the log-probs must match too."""
    logps, old, ref, adv, mask = _inputs(1)
    a = logps.clone().requires_grad_(True)
    b = logps.clone().requires_grad_(True)
    _trl_loss(loss_type, "token", 0.04, 0.2, 0.2, a, old, ref, adv, mask).backward()
    _ours(loss_type, "token", 0.04, 0.2, 0.2, b, old, ref, adv, mask).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-9)


def test_on_policy_loss_is_minus_mean_advantage():
    """With old = current log-probs the ratio is 1: the grpo loss is -mean(advantage)."""
    logps, _, _, adv, mask = _inputs()
    loss, ratio, kl = per_token_loss(logps, logps, adv, mask)
    assert kl is None and torch.allclose(ratio, torch.ones_like(ratio))
    assert math.isclose(float(reduce_loss(loss, mask, "grpo", MAX_LEN) / B), float(-adv.mean()), abs_tol=1e-12)


def test_padding_never_contributes():
    logps, old, ref, adv, mask = _inputs()
    other = -torch.rand(logps.shape, generator=torch.Generator().manual_seed(9), dtype=logps.dtype) * 5
    noisy, noisy_old = (torch.where(mask.bool(), x, other) for x in (logps, old))   # other values where mask is 0
    for loss_type in ("grpo", "dr_grpo", "dapo", "bnpo"):
        for level in ("token", "sequence"):
            a = _ours(loss_type, level, 0.04, 0.2, 0.2, logps, old, ref, adv, mask)
            b = _ours(loss_type, level, 0.04, 0.2, 0.2, noisy, noisy_old, ref, adv, mask)
            assert abs(float(a - b)) < 1e-12


# -- advantages -----------------------------------------------------------------------------------
def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 4.0, 6.0, 8.0])
    adv, zero = group_advantages(rewards, 4)
    std1 = math.sqrt(((0.5 ** 2) * 4) / 3)              # unbiased std of [1, 0, 0, 1]
    std2 = math.sqrt((9 + 1 + 1 + 9) / 3)               # of [2, 4, 6, 8]
    expected = [0.5 / (std1 + 1e-4), -0.5 / (std1 + 1e-4), -0.5 / (std1 + 1e-4), 0.5 / (std1 + 1e-4),
                -3 / (std2 + 1e-4), -1 / (std2 + 1e-4), 1 / (std2 + 1e-4), 3 / (std2 + 1e-4)]
    assert torch.allclose(adv, torch.tensor(expected), atol=1e-6)
    assert not zero.any()


def test_identical_rewards_give_zero_advantage_and_no_nan():
    rewards = torch.tensor([0.7, 0.7, 0.7, 0.0, 1.0, 0.0])
    for scale in ("group", "batch", "none"):
        adv, zero = group_advantages(rewards, 3, scale)
        assert torch.isfinite(adv).all()
        assert adv[:3].abs().max() == 0
    assert group_advantages(rewards, 3)[1].tolist() == [True] * 3 + [False] * 3


def test_unscorable_completion_is_left_out_of_its_group():
    rewards = torch.tensor([1.0, float("nan"), 3.0, 0.0])
    adv, _ = group_advantages(rewards, 4)
    mean = (1 + 3 + 0) / 3
    std = math.sqrt(sum((r - mean) ** 2 for r in (1, 3, 0)) / 2)
    assert adv[1] == 0 and torch.isfinite(adv).all()
    assert torch.allclose(adv[[0, 2, 3]], torch.tensor([1 - mean, 3 - mean, 0 - mean]) / (std + 1e-4), atol=1e-6)


def test_batch_and_no_scaling():
    rewards = torch.tensor([0.0, 2.0, 10.0, 14.0])
    none, _ = group_advantages(rewards, 2, "none")
    assert none.tolist() == [-1.0, 1.0, -2.0, 2.0]
    batch, _ = group_advantages(rewards, 2, "batch")
    std = torch.tensor([0.0, 2.0, 10.0, 14.0]).std()
    assert torch.allclose(batch, torch.tensor([-1.0, 1.0, -2.0, 2.0]) / (std + 1e-4))


def test_advantages_match_trl_scaling():
    from trl.trainer.utils import nanstd

    g = torch.Generator().manual_seed(3)
    rewards = torch.rand(12, generator=g)
    groups = rewards.view(-1, 4)
    expected = (rewards - groups.mean(1).repeat_interleave(4)) / (nanstd(groups, dim=1).repeat_interleave(4) + 1e-4)
    assert torch.allclose(group_advantages(rewards, 4)[0], expected, atol=1e-6)


# -- the objective's padding-free layout ------------------------------------------------------------
def test_pad_by_sequence():
    values = torch.arange(1.0, 7.0)
    out, mask = pad_by_sequence(values, torch.tensor([3, 0, 2, 1]))
    assert out.tolist() == [[1, 2, 3], [0, 0, 0], [4, 5, 0], [6, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 0], [1, 1, 0], [1, 0, 0]]


def test_objective_logps_equal_a_plain_forward():
    """Completion log-probs from the batched (right-padded) forward equal those of one model call per sequence."""
    from swiftlike.models import build_miniature
    from swiftlike.train.grpo_trainer import collate_completions

    model = build_miniature("Qwen/Qwen3-0.6B")
    samples = [{"prompt_ids": [5, 6, 7], "completion_ids": [8, 9, 10, 11], "advantage": 1.0, "masked": False},
               {"prompt_ids": [12, 13], "completion_ids": [14, 15], "advantage": -1.0, "masked": False}]
    batch = collate_completions(samples)
    for temperature in (1.0, 0.3):  # the sampled distribution's log-probs, log_softmax(logits / T) as TRL's
        obj = GRPOObjective(model, temperature=temperature)
        flat = obj.policy_logps(batch["input_ids"], batch["targets"], batch["position_ids"], batch["attention_mask"])
        expected = []
        for s in samples:
            ids = torch.tensor([s["prompt_ids"] + s["completion_ids"]])
            logits = (model(ids).logits[0] / temperature).log_softmax(-1)
            p = len(s["prompt_ids"])
            expected += [logits[p - 1 + k, t] for k, t in enumerate(s["completion_ids"])]
        assert torch.allclose(flat, torch.stack(expected), atol=1e-5)
    assert batch["completion_lens"].tolist() == [4, 2]
    # prompts and padding are never targets: exactly the completion tokens are, in order
    assert batch["targets"][batch["targets"] != -100].tolist() == [8, 9, 10, 11, 14, 15]


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_token_logps_at_a_temperature_and_their_gradients(softcap):
    """Both paths of token_logps (the fused frozen head, and a trainable one recomputed in backward) give
    log_softmax(capped logits / T) and its gradient."""
    from swiftlike.train.loss import token_logps

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden, targets = torch.randn(7, 16), torch.randint(0, 50, (7,))

    def plain(h, weight):
        z = h @ weight.T
        z = torch.tanh(z / softcap) * softcap if softcap else z
        return (z / 0.5).log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)

    h1 = hidden.clone().requires_grad_()
    expected = plain(h1, head.weight)
    expected.sum().backward()
    for frozen in (True, False):
        head.weight.requires_grad_(not frozen)
        h2 = hidden.clone().requires_grad_()
        ours = token_logps(head, h2, targets, 3, softcap, temperature=0.5)
        ours.sum().backward()
        torch.testing.assert_close(ours, expected.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h2.grad, h1.grad, rtol=1e-4, atol=1e-5)


def test_masked_completion_trains_nothing():
    from swiftlike.train.grpo_trainer import collate_completions

    batch = collate_completions([{"prompt_ids": [1, 2], "completion_ids": [3, 4, 5], "advantage": 1.0,
                                  "masked": True}])
    assert (batch["targets"] == -100).all() and batch["completion_lens"].tolist() == [0]
