"""Yi-1.5 chat: raw system text, and each user turn already opens the assistant turn."""
from .base import TemplateSpec
from .turns import render_yi

YI1_5 = TemplateSpec("yi1_5", render_yi, ("<|im_end|>", "<|endoftext|>"), {},
                     "Yi-1.5 chat (no separate generation prompt: the user turn opens the assistant)")

SPECS = [YI1_5]
