"""Llama-3, 3.1, 3.2 and 3.3 Instruct (ModelScope mirrors under LLM-Research)."""
from .core import register_family

_MS = "LLM-Research"
register_family("llama3", "llama", "LlamaForCausalLM", "llama3",
                ["meta-llama/Meta-Llama-3-8B-Instruct", "meta-llama/Meta-Llama-3-70B-Instruct"], _MS,
                ("transformers>=4.40",))
register_family("llama3", "llama", "LlamaForCausalLM", "llama3_1",
                ["meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-70B-Instruct",
                 "meta-llama/Llama-3.1-405B-Instruct", "meta-llama/Llama-3.3-70B-Instruct"], _MS,
                ("transformers>=4.43",))
register_family("llama3", "llama", "LlamaForCausalLM", "llama3_2",
                ["meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-3B-Instruct"], _MS,
                ("transformers>=4.45",))
