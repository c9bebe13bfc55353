"""InternLM2.5-chat and InternLM3-instruct (their modelling code ships with the checkpoints: --trust_remote_code)."""
from .core import register_family

_MS = "Shanghai_AI_Laboratory"
register_family("internlm", "internlm2", "InternLM2ForCausalLM", "internlm2_5",
                ["internlm/internlm2_5-7b-chat", "internlm/internlm2_5-20b-chat"], _MS, ("trust_remote_code",))
register_family("internlm", "internlm3", "InternLM3ForCausalLM", "internlm2_5", ["internlm/internlm3-8b-instruct"],
                _MS, ("trust_remote_code",))
