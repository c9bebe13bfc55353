"""MiniCPM4: plain ChatML (no bos, no default system)."""
from .base import TemplateSpec
from .turns import render_turns

MINICPM4 = TemplateSpec("minicpm4", render_turns, ("<|im_end|>", "</s>"),
                        {"header": "<|im_start|>{role}\n", "end": "<|im_end|>", "after_end": "\n"},
                        "MiniCPM4: plain ChatML")

SPECS = [MINICPM4]
