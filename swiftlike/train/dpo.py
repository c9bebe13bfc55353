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

from ..data.images import IMAGE_INPUTS
from .loss import FrozenReference, as_reference, token_logps

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


AVERAGED = ("simpo", "orpo")  # the methods whose rewards are mean per-token log-probs


def logged_logps(p: PairLogps, loss_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-probs a method's rewards are made of: per-token means for SimPO and ORPO (TRL's CPO and ORPO
    trainers log these), sums otherwise."""
    if loss_type in AVERAGED:
        return ((p.chosen / p.chosen_tokens.clamp(min=1)).detach(),
                (p.rejected / p.rejected_tokens.clamp(min=1)).detach())
    return p.chosen.detach(), p.rejected.detach()


def rewards(p: PairLogps, beta: float, loss_type: str = "sigmoid") -> tuple[torch.Tensor, torch.Tensor]:
    """Implicit rewards for logging: β·log-ratio, or β·log-prob (a per-token mean for SimPO and ORPO) for
    reference-free methods."""
    if p.ref_chosen is None:
        chosen, rejected = logged_logps(p, loss_type)
        return beta * chosen, beta * rejected
    return beta * (p.chosen - p.ref_chosen).detach(), beta * (p.rejected - p.ref_rejected).detach()


# -- the training objective ----------------------------------------------------------------------
def nll_weight(loss_type: str, rpo_alpha: float | None) -> float:
    """Weight of the chosen-completion NLL term: CPO and ORPO include one (1.0), DPO variants only with rpo_alpha."""
    if rpo_alpha is not None:
        return rpo_alpha
    return 1.0 if loss_type in ("cpo", "orpo") else 0.0


class PreferenceObjective(FrozenReference, torch.nn.Module):
    """Chosen and rejected completions of a batch in ONE padding-free forward; the reference log-probs come
    from the same model with its adapter disabled (LoRA), a frozen copy (full), or nothing (reference-free)."""

    def __init__(self, model, loss_type: str, beta: float, label_smoothing: float = 0.0, simpo_gamma: float = 0.5,
                 rpo_alpha: float | None = None, ref_model=None, router_aux_coef: float = 0.0):
        super().__init__()
        from .loss import CausalLMLoss

        self.policy = CausalLMLoss(model, router_aux_coef=router_aux_coef)
        self.ref = CausalLMLoss(ref_model) if ref_model is not None else None
        self.loss_type, self.beta, self.label_smoothing, self.simpo_gamma = loss_type, beta, label_smoothing, simpo_gamma
        self.nll = nll_weight(loss_type, rpo_alpha)

    unit = "pairs"

    @staticmethod
    def weight(batch: dict) -> float:
        return float(batch["n_pairs"])

    def _sequence_logps(self, module, input_ids, targets, position_ids, seq_lens, **images) -> tuple:
        """Summed log-probs and scored-token counts of every sequence, and the forward's MoE load-balancing loss
        (None unless weighted). `images`: a vision-language batch's pixels (data/collate.py ImageCollate; a
        text-only batch's blank image is a last, unscored sequence)."""
        hidden, aux = module.hidden_and_balance(input_ids, position_ids, None, seq_lens, **images)
        hidden = hidden[0]
        keep = targets[0] != -100
        seq_of = torch.repeat_interleave(torch.arange(len(seq_lens), device=seq_lens.device), seq_lens)[keep]
        lp = token_logps(module.causal_lm.get_output_embeddings(), hidden[keep], targets[0][keep], module.chunk_size,
                         module.softcap)
        sums = torch.zeros(len(seq_lens), dtype=lp.dtype, device=lp.device).index_add(0, seq_of, lp)
        counts = torch.bincount(seq_of, minlength=len(seq_lens)).to(lp.dtype)
        return sums, counts, aux

    def _reference(self, input_ids, targets, position_ids, seq_lens, **images):
        with torch.no_grad():
            if self.ref is not None:
                return self._sequence_logps(self.ref, input_ids, targets, position_ids, seq_lens, **images)[0]
            # LoRA: the adapter-disabled model; a full model with no frozen copy is only asked before its first
            # update (--precompute_ref_logps), when it is still the reference
            with as_reference(self.policy.model):
                return self._sequence_logps(self.policy, input_ids, targets, position_ids, seq_lens, **images)[0]

    def precompute(self, batch: dict) -> torch.Tensor:
        """Reference log-probs of a batch's sequences (chosen, then rejected), computed once before training."""
        return self._reference(batch["input_ids"], batch["targets"], batch["position_ids"], batch["seq_lens"],
                               **{k: batch[k] for k in IMAGE_INPUTS if k in batch})

    def forward(self, input_ids, targets, position_ids, seq_lens, n_pairs, margin=None, ref_logps=None, **images):
        n = int(n_pairs)  # (a reward-model margin column in the data is not used by these losses)
        sums, counts, aux = self._sequence_logps(self.policy, input_ids, targets, position_ids, seq_lens, **images)
        p = PairLogps(sums[:n], sums[n:2 * n], counts[:n], counts[n:2 * n])
        if self.loss_type not in REFERENCE_FREE:
            ref = ref_logps if ref_logps is not None else \
                self._reference(input_ids, targets, position_ids, seq_lens, **images)
            p.ref_chosen, p.ref_rejected = ref[:n], ref[n:2 * n]
        losses = preference_loss(p, self.loss_type, self.beta, self.label_smoothing, self.simpo_gamma)
        total = losses.sum()
        if self.nll:
            total = total + self.nll * (-p.chosen / p.chosen_tokens.clamp(min=1)).sum()
        chosen_r, rejected_r = rewards(p, self.beta, self.loss_type)
        chosen_lp, rejected_lp = logged_logps(p, self.loss_type)
        metrics = {"rewards/chosen": chosen_r.sum(), "rewards/rejected": rejected_r.sum(),
                   "rewards/margins": (chosen_r - rejected_r).sum(),
                   "rewards/accuracies": (chosen_r > rejected_r).float().sum(),
                   "logps/chosen": chosen_lp.sum(), "logps/rejected": rejected_lp.sum()}
        total, n_pairs, balance = self.policy.add_balance(total, aux, n_pairs)
        return total, n_pairs, {**{k: v.item() for k, v in metrics.items()}, **balance}


# -- KTO: unpaired preferences --------------------------------------------------------------------
def kto_loss(logps: torch.Tensor, ref_logps: torch.Tensor, labels: torch.Tensor, kl: torch.Tensor, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> torch.Tensor:
    """Per-example KTO loss (Eq. 7 of the KTO paper): desirable answers are pushed above the reference point
    `kl`, undesirable ones below it."""
    ratio = logps - ref_logps
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio)))
    return torch.where(labels, desirable, undesirable)


class KTOObjective(PreferenceObjective):
    """Matched (prompt_i, answer_i) and mismatched (prompt_i, answer_{i-1}) sequences in one forward; the
    mismatched ones estimate the KL reference point, detached, as in the KTO paper."""

    unit = "examples"

    def __init__(self, model, beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
                 ref_model=None, router_aux_coef: float = 0.0):
        super().__init__(model, "sigmoid", beta, ref_model=ref_model, router_aux_coef=router_aux_coef)
        self.desirable_weight, self.undesirable_weight = desirable_weight, undesirable_weight

    @staticmethod
    def weight(batch: dict) -> float:
        return float(batch["n_pairs"])

    def forward(self, input_ids, targets, position_ids, seq_lens, n_pairs, labels, **images):
        n = int(n_pairs)
        sums, _, aux = self._sequence_logps(self.policy, input_ids, targets, position_ids, seq_lens, **images)
        ref = self._reference(input_ids, targets, position_ids, seq_lens, **images)
        kl = (sums[n:2 * n] - ref[n:2 * n]).detach().mean().clamp(min=0)  # (a blank image's sequence is last)
        losses = kto_loss(sums[:n], ref[:n], labels, kl, self.beta, self.desirable_weight, self.undesirable_weight)
        reward = self.beta * (sums[:n] - ref[:n]).detach()
        metrics = {"kl": float(kl) * n,
                   "rewards/desirable": float(reward[labels].sum()), "rewards/undesirable": float(reward[~labels].sum()),
                   "count/desirable": float(labels.sum()), "count/undesirable": float((~labels).sum())}
        total, n_pairs, balance = self.policy.add_balance(losses.sum(), aux, n_pairs)
        return total, n_pairs, {**metrics, **balance}

    @staticmethod
    def finalize_metrics(means: dict) -> dict:
        """Per-class reward means from the per-example averages the trainer computes."""
        out = {k: means[k] for k in ("kl", "aux_loss") if k in means}
        for side in ("desirable", "undesirable"):
            if means[f"count/{side}"] > 0:
                out[f"rewards/{side}"] = means[f"rewards/{side}"] / means[f"count/{side}"]
        if "rewards/desirable" in out and "rewards/undesirable" in out:
            out["rewards/margins"] = out["rewards/desirable"] - out["rewards/undesirable"]
        return out


# -- reward models: Bradley-Terry on a sequence-classification head ------------------------------
def reward_model_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                      center_coefficient: float | None = None) -> torch.Tensor:
    """Per-pair Bradley-Terry loss -log σ(r_chosen - r_rejected - margin), plus the optional reward-centering
    term c·(r_chosen + r_rejected)² that keeps rewards near zero."""
    diff = chosen - rejected - (margin if margin is not None else 0.0)
    loss = -F.logsigmoid(diff)
    if center_coefficient:
        loss = loss + center_coefficient * (chosen + rejected) ** 2
    return loss


class RewardObjective(torch.nn.Module):
    """Scores chosen and rejected conversations in one padding-free forward: the head reads each sequence's
    last token."""

    unit = "pairs"

    def __init__(self, model, center_coefficient: float | None = None):
        super().__init__()
        self.model, self.center = model, center_coefficient

    @property
    def classifier(self):
        m = self.model
        return m.get_base_model() if hasattr(m, "get_base_model") else m

    @staticmethod
    def weight(batch: dict) -> float:
        return float(batch["n_pairs"])

    def scores(self, input_ids, position_ids, seq_lens) -> torch.Tensor:
        from .loss import packed_masks, sequence_borders

        net = self.classifier
        decoder = net.get_decoder()
        mask = packed_masks(decoder.config, seq_lens, net.dtype)
        borders = sequence_borders(seq_lens, decoder) if mask is None else {}
        hidden = decoder(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, use_cache=False,
                         **borders).last_hidden_state[0]
        last = torch.cumsum(seq_lens, 0) - 1
        return net.score(hidden[last]).squeeze(-1).float()

    def forward(self, input_ids, targets, position_ids, seq_lens, n_pairs, margin=None):
        n = int(n_pairs)
        r = self.scores(input_ids, position_ids, seq_lens)
        chosen, rejected = r[:n], r[n:]
        losses = reward_model_loss(chosen, rejected, margin, self.center)
        metrics = {"accuracy": float((chosen > rejected).float().sum()),
                   "margin": float((chosen - rejected).detach().sum()),
                   "mean_reward": float((chosen + rejected).detach().sum() / 2)}
        return losses.sum(), n_pairs, metrics
