"""Llama-3, 3.1, 3.2 and 3.3 Instruct templates.

Llama-3: role headers and <|eot_id|> (Meta-Llama-3-8B-Instruct). Llama-3.1/3.3 (byte-identical templates) and
3.2 always open with a system header carrying the knowledge cutoff and date; custom tools go into the first
user message; a tool call is JSON with "parameters"; tool results use the ipython role.
"""
from __future__ import annotations

import json
import time

from .base import Segments, TemplateSpec
from .errors import TemplateError
from .messages import parsed_arguments
from .turns import render_turns

_BOS = "<|begin_of_text|>"
_STOP = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")


def _header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


def _tojson(value, indent=None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def render_llama31(spec: TemplateSpec, messages: list[dict], tools: list | None, add_generation_prompt: bool,
                   date_string: str | None = None, **_) -> Segments:
    date = date_string or spec.options.get("date_string") or time.strftime("%d %b %Y")
    segs: Segments = [(_BOS, False)]
    system = ""
    if messages and messages[0]["role"] == "system":
        system, messages = (messages[0].get("content") or "").strip(), messages[1:]
    head = _header("system") + ("Environment: ipython\n" if tools is not None else "")
    segs.append((head + "Cutting Knowledge Date: December 2023\nToday Date: " + date + "\n\n" + system + "<|eot_id|>",
                 False))
    if tools is not None:
        if not messages:
            raise TemplateError("Cannot put tools in the first user message when there's no first user message!")
        first, messages = (messages[0].get("content") or "").strip(), messages[1:]
        segs.append((_header("user") + "Given the following functions, please respond with a JSON for a function "
                     "call with its proper arguments that best answers the given prompt.\n\n"
                     'Respond in the format {"name": function name, "parameters": dictionary of argument name and its '
                     'value}.Do not use variables.\n\n' + "".join(_tojson(t, 4) + "\n\n" for t in tools)
                     + first + "<|eot_id|>", False))
    for m in messages:
        role, trained = m["role"], m.get("loss")
        if role in ("tool", "ipython"):
            # the official template tests `content is iterable`, which strings are: it always JSON-encodes
            segs.append((_header("ipython") + _tojson(m.get("content") or "") + "<|eot_id|>", bool(trained)))
        elif "tool_calls" in m:
            if len(m["tool_calls"]) != 1:
                raise TemplateError("This model only supports single tool-calls at once!")
            fn = m["tool_calls"][0].get("function") or m["tool_calls"][0]
            body = '{"name": "' + fn["name"] + '", "parameters": ' + _tojson(parsed_arguments(fn)) + "}"
            segs += [(_header("assistant"), False), (body + "<|eot_id|>", trained is not False)]
        elif role == "assistant":
            segs += [(_header("assistant"), False),
                     ((m.get("content") or "").strip() + "<|eot_id|>", trained is not False)]
        else:
            segs.append((_header(role) + (m.get("content") or "").strip() + "<|eot_id|>", bool(trained)))
    if add_generation_prompt:
        segs.append((_header("assistant"), False))
    return segs


LLAMA3 = TemplateSpec(
    "llama3", render_turns, _STOP,
    {"bos": _BOS, "header": "<|start_header_id|>{role}<|end_header_id|>\n\n", "end": "<|eot_id|>", "trim": True},
    "Llama-3 Instruct: role headers, trimmed content, <|eot_id|>")
LLAMA3_1 = TemplateSpec(
    "llama3_1", render_llama31, _STOP, {"tool_format": "llama3_json", "date_string": "26 Jul 2024"},
    "Llama-3.1 / 3.3 Instruct: system header with cutoff and the fixed date 26 Jul 2024; JSON tool calls")
LLAMA3_2 = TemplateSpec(
    "llama3_2", render_llama31, _STOP, {"tool_format": "llama3_json"},
    "Llama-3.2 Instruct: as 3.1 with today's date (pass date_string= to fix it)")

SPECS = [LLAMA3, LLAMA3_1, LLAMA3_2]
