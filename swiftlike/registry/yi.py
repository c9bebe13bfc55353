"""Yi-1.5 chat models (Llama architecture)."""
from .core import register_family

register_family("yi", "llama", "LlamaForCausalLM", "yi1_5",
                ["01-ai/Yi-1.5-6B-Chat", "01-ai/Yi-1.5-9B-Chat", "01-ai/Yi-1.5-34B-Chat"], "01ai",
                ("transformers>=4.37",))
