"""InternLM chat templates: ChatML after the bos token.

InternLM2-chat: bos only when the chat starts with user/system, </s> after a final assistant turn.
InternLM2.5-chat and InternLM3-instruct share one simpler template: bos, then plain ChatML.
"""
from .base import TemplateSpec
from .turns import render_turns

_CHATML = {"header": "<|im_start|>{role}\n", "end": "<|im_end|>", "after_end": "\n"}
_STOP = ("<|im_end|>", "</s>")

INTERNLM2 = TemplateSpec(
    "internlm2", render_turns, _STOP,
    {**_CHATML, "bos": "<s>", "bos_if_first": ("user", "system"), "final_eos": "after_assistant", "eos": "</s>"},
    "InternLM2 chat: bos when the chat starts with user/system; </s> after a final assistant turn")
INTERNLM2_5 = TemplateSpec("internlm2_5", render_turns, _STOP, {**_CHATML, "bos": "<s>"},
                           "InternLM2.5 chat and InternLM3 instruct: bos, then ChatML")

SPECS = [INTERNLM2, INTERNLM2_5]
