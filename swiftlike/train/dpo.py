"""Preference losses for `wb dpo` (small, named functions; the trainer composes them).

Inputs are per-pair tensors: summed completion log-probabilities of the policy (and of the reference for
the reference-based losses) and completion token counts. Each function returns the per-pair loss; the
trainer averages over pairs and adds the NLL term where the method has one (`rpo_alpha` for DPO, `cpo_alpha`
for CPO, ORPO's own NLL). Formulas follow the papers and TRL's implementations, which the tests compare
against within 1e-5.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

REFERENCE_FREE = ("simpo", "orpo", "cpo")
LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust") + REFERENCE_FREE


@dataclass
class PairLogps:
    chosen: torch.Tensor            # summed log-probs of the chosen completions (B,)
    rejected: torch.Tensor          # (B,)
    chosen_tokens: torch.Tensor     # completion lengths (B,)
    rejected_tokens: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None


def _conservative_sigmoid(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """-log σ(β·x) with label smoothing ε (the conservative DPO/CPO form); ε = 0 is plain DPO."""
    return -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing


def dpo_sigmoid_loss(p: PairLogps, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    delta = (p.chosen - p.ref_chosen) - (p.rejected - p.ref_rejected)
    return _conservative_sigmoid(delta, beta, label_smoothing)


def dpo_hinge_loss(p: PairLogps, beta: float) -> torch.Tensor:
    delta = (p.chosen - p.ref_chosen) - (p.rejected - p.ref_rejected)
    return torch.relu(1 - beta * delta)


def ipo_loss(p: PairLogps, beta: float) -> torch.Tensor:
    """IPO on per-token log-ratios (length-normalised, as the IPO authors and TRL do)."""
    chosen = (p.chosen - p.ref_chosen) / p.chosen_tokens.clamp(min=1)
    rejected = (p.rejected - p.ref_rejected) / p.rejected_tokens.clamp(min=1)
    return (chosen - rejected - 1 / (2 * beta)) ** 2


def robust_dpo_loss(p: PairLogps, beta: float, label_smoothing: float) -> torch.Tensor:
    """Robust DPO: unbiased under a label-flip rate ε = label_smoothing (< 0.5)."""
    delta = (p.chosen - p.ref_chosen) - (p.rejected - p.ref_rejected)
    clean = -(1 - label_smoothing) * F.logsigmoid(beta * delta)
    flipped = -label_smoothing * F.logsigmoid(-beta * delta)
    return (clean - flipped) / (1 - 2 * label_smoothing)


def simpo_loss(p: PairLogps, beta: float, gamma: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """SimPO: reference-free, length-normalised rewards with a target margin γ."""
    logits = p.chosen / p.chosen_tokens.clamp(min=1) - p.rejected / p.rejected_tokens.clamp(min=1) - gamma / beta
    return _conservative_sigmoid(logits, beta, label_smoothing)


def cpo_loss(p: PairLogps, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """CPO's preference term (reference-free DPO on summed log-probs); the trainer adds cpo_alpha x NLL."""
    return _conservative_sigmoid(p.chosen - p.rejected, beta, label_smoothing)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, numerically stable on both sides of -log 2."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_odds_ratio_loss(p: PairLogps, beta: float) -> torch.Tensor:
    """ORPO's odds-ratio term on mean per-token log-probs, as a loss (to add to the chosen NLL)."""
    chosen = (p.chosen / p.chosen_tokens.clamp(min=1)).float()
    rejected = (p.rejected / p.rejected_tokens.clamp(min=1)).float()
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
    return -beta * F.logsigmoid(log_odds)


def preference_loss(p: PairLogps, loss_type: str, beta: float, label_smoothing: float = 0.0,
                    simpo_gamma: float = 0.5) -> torch.Tensor:
    """Per-pair loss of a method (without its NLL term)."""
    if loss_type == "sigmoid":
        return dpo_sigmoid_loss(p, beta, label_smoothing)
    if loss_type == "hinge":
        return dpo_hinge_loss(p, beta)
    if loss_type == "ipo":
        return ipo_loss(p, beta)
    if loss_type == "robust":
        return robust_dpo_loss(p, beta, label_smoothing)
    if loss_type == "simpo":
        return simpo_loss(p, beta, simpo_gamma, label_smoothing)
    if loss_type == "cpo":
        return cpo_loss(p, beta, label_smoothing)
    if loss_type == "orpo":
        return orpo_odds_ratio_loss(p, beta)
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")


def rewards(p: PairLogps, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Implicit rewards for logging: β·log-ratio, or β·log-prob for reference-free methods."""
    if p.ref_chosen is None:
        return beta * p.chosen.detach(), beta * p.rejected.detach()
    return beta * (p.chosen - p.ref_chosen).detach(), beta * (p.rejected - p.ref_rejected).detach()
