"""Gemma-2 and Gemma-3 (text) instruction templates: <start_of_turn>{user|model} ... <end_of_turn>.

Gemma-2 rejects a system message; Gemma-3 folds it into the first user turn. Both require alternating
user/model turns and trim content.
"""
from .base import TemplateSpec
from .turns import render_turns

_ALTERNATE = "Conversation roles must alternate user/assistant/user/assistant/..."
_COMMON = {"bos": "<bos>", "header": "<start_of_turn>{role}\n", "role_names": {"assistant": "model"},
           "end": "<end_of_turn>", "after_end": "\n", "trim": True, "alternate": _ALTERNATE}
_STOP = ("<end_of_turn>", "<eos>")

GEMMA2 = TemplateSpec("gemma2", render_turns, _STOP, {**_COMMON, "system": "reject"},
                      "Gemma-2 it: no system role (the official template raises)")
GEMMA3 = TemplateSpec("gemma3", render_turns, _STOP, {**_COMMON, "system": "fold"},
                      "Gemma-3 it: the system message is prefixed to the first user turn")

SPECS = [GEMMA2, GEMMA3]
