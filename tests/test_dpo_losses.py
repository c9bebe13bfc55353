"""Each preference loss equals TRL's implementation on the same log-probabilities (within 1e-5).

TRL is the independent reference here: its DPO losses are reached through DPOTrainer._compute_loss with
precomputed reference log-probs and a stand-in model that returns per-token log-probs; CPO/SimPO and ORPO
through their trainers' loss methods.
"""
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from swiftlike.train.dpo import PairLogps, preference_loss, rewards

B, L = 4, 9


def _pairs(seed=0):
    g = torch.Generator().manual_seed(seed)
    per_token = -torch.rand((2 * B, L - 1), generator=g) * 3        # chosen rows first, then rejected
    mask = torch.zeros((2 * B, L), dtype=torch.long)
    for i, n in enumerate([3, 5, 8, 2, 4, 6, 1, 7]):
        mask[i, L - n:] = 1                                            # completion at the end of each row
    shift = mask[:, 1:]
    logps = (per_token * shift).sum(1)
    ref = logps + torch.randn(2 * B, generator=g) * 0.5
    tokens = shift.sum(1).float()
    p = PairLogps(logps[:B], logps[B:], tokens[:B], tokens[B:], ref[:B], ref[B:])
    return p, per_token, mask, ref


def _trl_dpo(loss_type, beta, label_smoothing, per_token, mask, ref):
    from trl import DPOTrainer

    accel = SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x, unwrap_model=lambda m: m)
    shift = mask[:, 1:]
    outputs = SimpleNamespace(log_probs=per_token * shift, entropy=torch.zeros_like(per_token),
                              mean_logits=torch.zeros_like(per_token), is_top1=torch.zeros_like(per_token).bool())
    fake_self = SimpleNamespace(model=SimpleNamespace(training=True), accelerator=accel, aux_loss_enabled=False,
                                ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
                                loss_types=[loss_type], loss_weights=[1.0], beta=beta,
                                label_smoothing=label_smoothing, use_weighting=False,
                                _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros_like(mask), "attention_mask": torch.ones_like(mask), "completion_mask": mask,
              "ref_chosen_logps": ref[:B], "ref_rejected_logps": ref[B:]}
    return DPOTrainer._compute_loss(fake_self, lambda **kw: outputs, inputs, False)


@pytest.mark.parametrize("loss_type, label_smoothing", [("sigmoid", 0.0), ("hinge", 0.0), ("ipo", 0.0),
                                                        ("robust", 0.1)])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_losses_match_trl(loss_type, label_smoothing, beta):
    p, per_token, mask, ref = _pairs()
    ours = preference_loss(p, loss_type, beta, label_smoothing).mean()
    torch.testing.assert_close(ours, _trl_dpo(loss_type, beta, label_smoothing, per_token, mask, ref),
                               rtol=1e-5, atol=1e-5)


def _trl_cpo(loss_type, beta, label_smoothing, gamma, chosen, rejected):
    from trl.experimental.cpo import CPOTrainer

    fake_self = SimpleNamespace(alpha=0.0, accelerator=SimpleNamespace(device="cpu"), loss_type=loss_type,
                                simpo_gamma=gamma, beta=beta, label_smoothing=label_smoothing)
    return CPOTrainer.cpo_loss(fake_self, chosen, rejected)[0]


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cpo_and_simpo_match_trl(label_smoothing):
    p, *_ = _pairs(1)
    torch.testing.assert_close(preference_loss(p, "cpo", 0.1, label_smoothing),
                               _trl_cpo("sigmoid", 0.1, label_smoothing, 0.5, p.chosen, p.rejected),
                               rtol=1e-5, atol=1e-5)
    # SimPO (TRL's CPOTrainer) scores length-averaged log-probs
    avg_c, avg_r = p.chosen / p.chosen_tokens, p.rejected / p.rejected_tokens
    torch.testing.assert_close(preference_loss(p, "simpo", 2.0, label_smoothing, simpo_gamma=0.5),
                               _trl_cpo("simpo", 2.0, label_smoothing, 0.5, avg_c, avg_r), rtol=1e-5, atol=1e-5)


def test_orpo_matches_trl():
    from trl.experimental.orpo import ORPOTrainer

    p, *_ = _pairs(2)
    avg_c, avg_r = p.chosen / p.chosen_tokens, p.rejected / p.rejected_tokens
    fake_self = SimpleNamespace(beta=0.1, accelerator=SimpleNamespace(device="cpu"))
    trl_losses = ORPOTrainer.odds_ratio_loss(fake_self, avg_c, avg_r)[0]
    # ORPO's total loss is NLL - mean(losses): our term is the negated one, so the totals agree
    torch.testing.assert_close(preference_loss(p, "orpo", 0.1), -trl_losses, rtol=1e-5, atol=1e-5)


def test_rewards_and_reference_free_rewards():
    p, *_ = _pairs()
    chosen, rejected = rewards(p, 0.1)
    torch.testing.assert_close(chosen, 0.1 * (p.chosen - p.ref_chosen))
    free = PairLogps(p.chosen, p.rejected, p.chosen_tokens, p.rejected_tokens)
    torch.testing.assert_close(rewards(free, 0.1)[1], 0.1 * p.rejected)


def test_logged_rewards_of_simpo_cpo_and_orpo_are_trls():
    """TRL's CPO and ORPO trainers return the rewards they log: β x the per-token mean log-prob for SimPO and ORPO
    (ours were β x the sum: a pair SimPO ranks right could log accuracy 0), β x the sum for CPO."""
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    p, *_ = _pairs(3)
    free = PairLogps(p.chosen, p.rejected, p.chosen_tokens, p.rejected_tokens)
    avg_c, avg_r = p.chosen / p.chosen_tokens, p.rejected / p.rejected_tokens
    cpo = SimpleNamespace(alpha=0.0, accelerator=SimpleNamespace(device="cpu"), simpo_gamma=0.5, beta=2.0,
                          label_smoothing=0.0)
    for loss_type, inputs in (("simpo", (avg_c, avg_r)), ("sigmoid", (p.chosen, p.rejected))):
        _, trl_chosen, trl_rejected = CPOTrainer.cpo_loss(SimpleNamespace(**vars(cpo), loss_type=loss_type), *inputs)
        ours = rewards(free, 2.0, "simpo" if loss_type == "simpo" else "cpo")
        torch.testing.assert_close(ours, (trl_chosen, trl_rejected), rtol=1e-5, atol=1e-5)
    trl_chosen, trl_rejected = ORPOTrainer.odds_ratio_loss(SimpleNamespace(beta=0.1, accelerator=cpo.accelerator),
                                                           avg_c, avg_r)[1:3]
    torch.testing.assert_close(rewards(free, 0.1, "orpo"), (trl_chosen, trl_rejected), rtol=1e-5, atol=1e-5)


def test_unknown_loss_type():
    p, *_ = _pairs()
    with pytest.raises(ValueError, match="unknown loss_type 'dpo'"):
        preference_loss(p, "dpo", 0.1)
