"""MiniCPM4 (modelling code ships with the checkpoints: --trust_remote_code)."""
from .core import register_family

register_family("minicpm", "minicpm", "MiniCPMForCausalLM", "minicpm4",
                ["openbmb/MiniCPM4-0.5B", "openbmb/MiniCPM4-8B"], "OpenBMB", ("trust_remote_code",))
