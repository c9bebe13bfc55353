"""Qwen3 templates: hybrid thinking (Qwen3-*), Instruct-2507 and Thinking-2507.

Official references: Qwen/Qwen3-0.6B tokenizer_config chat_template; the 2507 revisions'
templates. Parity is proven in tests/test_template_parity_qwen3.py.
"""
from .base import TemplateSpec
from .chatml import render_chatml

_STOP = ("<|im_end|>", "<|endoftext|>")

QWEN3 = TemplateSpec(
    "qwen3", render_chatml, _STOP, {"tool_format": "hermes", "hybrid_thinking": True},
    "Qwen3 hybrid thinking; enable_thinking=False pre-fills an empty think block at inference")
QWEN3_INSTRUCT_2507 = TemplateSpec(
    "qwen3_instruct_2507", render_chatml, _STOP, {"tool_format": "hermes", "strict_strings": True},
    "Qwen3-*-Instruct-2507 (non-thinking)")
QWEN3_THINKING_2507 = TemplateSpec(
    "qwen3_thinking_2507", render_chatml, _STOP, {"tool_format": "hermes", "strict_strings": True,
                                                           "generation_suffix": "<think>\n"},
    "Qwen3-*-Thinking-2507 (the generation prompt opens <think>)")

SPECS = [QWEN3, QWEN3_INSTRUCT_2507, QWEN3_THINKING_2507]
