"""The load-balancing loss of a mixture-of-experts model (Switch Transformer's), added to the training loss.

Each MoE family in transformers defines its own `load_balancing_loss_func` beside the model and adds
`router_aux_loss_coef` times it to the loss when `output_router_logits` is set. Our losses are computed from the
decoder's hidden states, not by the model's own forward, so the term is added here, with the family's function: the
same quantity a transformers Trainer or TRL would add. Families that balance their experts otherwise (DeepSeek-V3's
bias-adjusted routing) define none.
"""
from __future__ import annotations

import sys
from typing import Callable

from ..errors import UserError


def balance_function(causal_lm) -> Callable | None:
    """The model family's `load_balancing_loss_func` (from its transformers modeling module), or None."""
    return getattr(sys.modules.get(type(causal_lm).__module__), "load_balancing_loss_func", None)


def expert_counts(config) -> tuple[int, int]:
    """(experts, experts per token) of a decoder config: `num_experts` (Qwen-MoE, OLMoE) or `num_local_experts`
    (Mixtral, Phi-MoE, gpt-oss)."""
    experts = getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None)
    return int(experts), int(config.num_experts_per_tok)


def router_aux_coefficient(requested: float | None, causal_lm, model: str) -> float:
    """The weight of the load-balancing loss: --router_aux_loss_coef, else what the model's config asks of its own
    training loss (`router_aux_loss_coef` when `output_router_logits` is set, as transformers does), else 0."""
    config = causal_lm.get_decoder().config
    found = balance_function(causal_lm) is not None and hasattr(config, "num_experts_per_tok")
    if requested is None:
        return float(getattr(config, "router_aux_loss_coef", 0.0)) if found and \
            getattr(config, "output_router_logits", False) else 0.0
    if requested and not found:
        raise UserError(f"--router_aux_loss_coef: {model} ({config.model_type}) has no mixture-of-experts "
                        "load-balancing loss to weight (only MoE families whose transformers model defines one: "
                        "Qwen-MoE, Mixtral, OLMoE, Phi-MoE, gpt-oss, ...)")
    return float(requested)


def describe(coefficient: float, causal_lm) -> str | None:
    """The start-up line of a run of an MoE model with a load-balancing loss (None for any other model)."""
    config = causal_lm.get_decoder().config
    if balance_function(causal_lm) is None or not hasattr(config, "num_experts_per_tok"):
        return None
    if coefficient:
        return f"MoE load-balancing loss: {coefficient:g} x aux_loss (logged as aux_loss; --router_aux_loss_coef)"
    return (f"MoE load-balancing loss: off (the model's config does not ask for it; --router_aux_loss_coef "
            f"{getattr(config, 'router_aux_loss_coef', 0.001) or 0.001:g} turns it on)")
