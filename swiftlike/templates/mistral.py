"""Mistral templates: v0.1 (Mixtral-8x7B), v0.3 (Mistral-7B-Instruct-v0.3) and v3-tekken (Nemo).

The official v0.3/Nemo templates put the system message into the LAST user turn, and only when that
turn is the last message. Rendered for training (a chat ending in an assistant turn) the system message
would vanish. We render a training chat as its generation prompt plus the completion, i.e. the system
message goes into the final user turn — the context the model sees when it produces that turn.
For a chat ending in a user turn (inference) the text equals the official template's.
"""
from __future__ import annotations

import json

from .base import Segments, TemplateSpec
from .errors import TemplateError

_ALTERNATE = "After the optional system message, conversation roles must alternate user/assistant/user/assistant/..."
_IDS = "Tool call IDs should be alphanumeric strings with length 9!"


def _tools_block(tools: list, sep: str) -> str:
    out = []
    for tool in tools:
        fn = tool.get("function", tool)
        fields = [f'"{k}": "{v}"' if isinstance(v, str) else f'"{k}": ' + json.dumps(v, ensure_ascii=False)
                  for k, v in fn.items() if k != "return"]
        out.append('{"type": "function", "function": {' + ", ".join(fields) + "}}")
    return f"[AVAILABLE_TOOLS]{sep}[" + ", ".join(out) + "][/AVAILABLE_TOOLS]"


def render_mistral(spec: TemplateSpec, messages: list[dict], tools: list | None, add_generation_prompt: bool,
                   **_) -> Segments:
    sep = spec.options["sep"]  # " " for v0.3, "" for tekken (Nemo)
    system = None
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0].get("content") or "", messages[1:]
    index = 0
    for m in messages:
        if not (m["role"] == "tool" or m.get("tool_calls")):
            if (m["role"] == "user") != (index % 2 == 0):
                raise TemplateError(_ALTERNATE)
            index += 1
    users = [m for m in messages if m["role"] == "user"]
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    segs: Segments = [("<s>", False)]
    for i, m in enumerate(messages):
        role, trained = m["role"], m.get("loss")
        if role == "user":
            text = _tools_block(tools, sep) if tools and m == users[-1] else ""
            content = m.get("content") or ""
            if i == last_user and system is not None:
                content = system + "\n\n" + content
            segs.append((text + f"[INST]{sep}" + content + "[/INST]", bool(trained)))
        elif m.get("tool_calls"):
            calls = []
            for call in m["tool_calls"]:
                if len(str(call.get("id", ""))) != 9:
                    raise TemplateError(_IDS)
                fn = call.get("function") or call
                calls.append(json.dumps({"name": fn["name"], "arguments": fn.get("arguments")},
                                        ensure_ascii=False)[:-1] + ', "id": "' + call["id"] + '"}')
            segs.append((f"[TOOL_CALLS]{sep}[" + ", ".join(calls) + "]</s>", trained is not False))
        elif role == "assistant":
            content = m.get("content") or ""
            segs.append(((" " + content.strip() if sep else content) + "</s>", trained is not False))
        elif role == "tool":
            call_id = str(m.get("tool_call_id", ""))
            if len(call_id) != 9:
                raise TemplateError(_IDS)
            segs.append((f'[TOOL_RESULTS]{sep}{{"content": ' + (m.get("content") or "") + ', "call_id": "' + call_id
                         + '"}[/TOOL_RESULTS]', bool(trained)))
        else:
            raise TemplateError("Only user and assistant roles are supported, with the exception of an initial "
                                "optional system message!")
    return segs


def render_mistral_v1(spec: TemplateSpec, messages: list[dict], tools: list | None, add_generation_prompt: bool,
                      **_) -> Segments:
    segs: Segments = [("<s>", False)]
    for i, m in enumerate(messages):
        if (m["role"] == "user") != (i % 2 == 0):
            raise TemplateError("Conversation roles must alternate user/assistant/user/assistant/...")
        if m["role"] == "user":
            segs.append(("[INST] " + (m.get("content") or "") + " [/INST]", bool(m.get("loss"))))
        elif m["role"] == "assistant":
            segs.append(((m.get("content") or "") + "</s>", m.get("loss") is not False))
        else:
            raise TemplateError("Only user and assistant roles are supported!")
    return segs


_STOP = ("</s>",)
MISTRAL_V1 = TemplateSpec("mistral_v1", render_mistral_v1, _STOP, {},
                          "Mistral/Mixtral v0.1: [INST] ... [/INST] answer</s>; strictly alternating, no system")
MISTRAL_V3 = TemplateSpec("mistral_v3", render_mistral, _STOP, {"tool_format": "mistral", "sep": " "},
                          "Mistral-7B-Instruct-v0.3: [INST] with spaces, [AVAILABLE_TOOLS]/[TOOL_CALLS]/[TOOL_RESULTS]")
MISTRAL_NEMO = TemplateSpec("mistral_nemo", render_mistral, _STOP, {"tool_format": "mistral", "sep": ""},
                            "Mistral-Nemo (v3-tekken): no spaces around [INST]")

SPECS = [MISTRAL_V1, MISTRAL_V3, MISTRAL_NEMO]
