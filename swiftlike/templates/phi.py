"""Phi-3.5-mini-instruct and Phi-4 templates (other roles than system/user/assistant are not rendered)."""
from .base import TemplateSpec
from .turns import render_turns

PHI3_5 = TemplateSpec(
    "phi3_5", render_turns, ("<|end|>", "<|endoftext|>"),
    {"header": "<|{role}|>\n", "end": "<|end|>", "after_end": "\n", "system": "skip_empty",
     "roles": ("system", "user", "assistant"), "final_eos": "unless_generation", "eos": "<|endoftext|>"},
    "Phi-3.5: <|role|> headers, <|end|>; the official template appends <|endoftext|> to a finished chat")
PHI4 = TemplateSpec(
    "phi4", render_turns, ("<|im_end|>", "<|endoftext|>"),
    {"header": "<|im_start|>{role}<|im_sep|>", "end": "<|im_end|>", "roles": ("system", "user", "assistant")},
    "Phi-4: <|im_start|>role<|im_sep|> ... <|im_end|> with no newlines (fixed revision)")

SPECS = [PHI3_5, PHI4]
