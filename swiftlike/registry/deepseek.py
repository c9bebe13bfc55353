"""DeepSeek V3 / V3-0324 / V3.1 / R1 and the R1 distillations into Qwen2.5 and Llama-3."""
from .core import register_family

_V3_REQ = ("transformers>=4.57",)
register_family("deepseek", "deepseek_v3", "DeepseekV3ForCausalLM", "deepseek_v3",
                ["deepseek-ai/DeepSeek-V3", "deepseek-ai/DeepSeek-V3-0324"], requires=_V3_REQ)
register_family("deepseek", "deepseek_v3", "DeepseekV3ForCausalLM", "deepseek_v3_1", ["deepseek-ai/DeepSeek-V3.1"],
                requires=_V3_REQ)
register_family("deepseek", "deepseek_v3", "DeepseekV3ForCausalLM", "deepseek_r1", ["deepseek-ai/DeepSeek-R1"],
                requires=_V3_REQ)
register_family("deepseek", "qwen2", "Qwen2ForCausalLM", "deepseek_r1_distill",
                [f"deepseek-ai/DeepSeek-R1-Distill-Qwen-{s}" for s in ("1.5B", "7B", "14B", "32B")],
                requires=("transformers>=4.37",))
register_family("deepseek", "llama", "LlamaForCausalLM", "deepseek_r1_distill",
                ["deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "deepseek-ai/DeepSeek-R1-Distill-Llama-70B"],
                requires=("transformers>=4.43",))
