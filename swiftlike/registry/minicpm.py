"""MiniCPM4 (modelling code ships with the checkpoints: --trust_remote_code)."""
from .core import register_family

register_family("minicpm", "minicpm", "MiniCPMForCausalLM", "minicpm4",
                ["openbmb/MiniCPM4-0.5B", "openbmb/MiniCPM4-8B"], "OpenBMB", ("trust_remote_code",),
                no_miniature="MiniCPM4's network (muP-scaled embeddings, residual branches and logits; InfLLM-v2 "
                             "sparse attention in the 8B) exists only as remote code in its repository and "
                             "transformers has no in-library equivalent, so it cannot be built offline")
