"""Qwen2.5 (incl. Coder) and QwQ templates.

Official references: Qwen/Qwen2.5-7B-Instruct and Qwen/QwQ-32B (later revision: reasoning is stripped
from earlier assistant turns only) tokenizer_config chat templates.
"""
from .base import TemplateSpec
from .chatml import render_qwen2

_STOP = ("<|im_end|>", "<|endoftext|>")

QWEN2_5 = TemplateSpec(
    "qwen2_5", render_qwen2, _STOP,
    {"tool_format": "hermes",
     "default_system": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."},
    "Qwen2.5 Instruct/Coder: ChatML with a default system prompt")
QWQ = TemplateSpec(
    "qwq", render_qwen2, _STOP, {"tool_format": "hermes", "default_system": None, "think_history": True,
                                   "inline_reasoning": True, "generation_suffix": "<think>\n"},
    "QwQ-32B: reasoning inline in <think>, kept only on the final assistant turn")

SPECS = [QWEN2_5, QWQ]
