"""Parse generated text back into OpenAI-style tool calls, one parser per family's tool-call format.

`parse_tool_calls(text, fmt)` -> (content, tool_calls). Text that is not a well-formed call stays
content: a model that writes broken JSON gets its words back, not an exception.
"""
from __future__ import annotations

import json
import re

_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_DS = re.compile(r"<｜tool▁call▁begin｜>(\w+)<｜tool▁sep｜>(.*?)\n```json\n(.*?)\n```<｜tool▁call▁end｜>", re.S)
_DS31 = re.compile(r"<｜tool▁call▁begin｜>(.*?)<｜tool▁sep｜>(.*?)<｜tool▁call▁end｜>", re.S)


def _call(name: str, arguments, call_id: str | None = None) -> dict:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass
    out = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if call_id:
        out["id"] = call_id
    return out


def _hermes(text: str):
    calls = []
    for body in _HERMES.findall(text):
        try:
            obj = json.loads(body)
        except json.JSONDecodeError:
            return text, []
        if not isinstance(obj, dict) or "name" not in obj:
            return text, []
        calls.append(_call(obj["name"], obj.get("arguments", {})))
    # only trailing whitespace goes (as vLLM's hermes parser keeps the text before a call): a stream has sent the
    # leading part before it can know a call follows
    content = text.split("<tool_call>")[0].rstrip() if calls else text
    return content, calls


def _llama_json(text: str):
    try:
        obj = json.loads(text.strip())
    except json.JSONDecodeError:
        return text, []
    if isinstance(obj, dict) and "name" in obj and ("parameters" in obj or "arguments" in obj):
        return "", [_call(obj["name"], obj.get("parameters", obj.get("arguments")))]
    return text, []


def _mistral(text: str):
    head, sep, tail = text.partition("[TOOL_CALLS]")
    if not sep:
        return text, []
    tail = tail.strip().removesuffix("</s>").strip()
    try:
        items = json.loads(tail)
    except json.JSONDecodeError:
        return text, []
    if not isinstance(items, list) or not all(isinstance(i, dict) and "name" in i for i in items):
        return text, []
    return head.rstrip(), [_call(i["name"], i.get("arguments", {}), i.get("id")) for i in items]


def _deepseek(text: str):
    found = _DS.findall(text)
    if not found:
        return text, []
    return text.split("<｜tool▁calls▁begin｜>")[0].rstrip(), [_call(name, args) for _, name, args in found]


def _deepseek_v31(text: str):
    found = _DS31.findall(text)
    if not found:
        return text, []
    return text.split("<｜tool▁calls▁begin｜>")[0].rstrip(), [_call(name, args) for name, args in found]


def _glm4(text: str):
    """GLM-4 writes each call as "{function name}\n{json arguments}", calls separated by <|assistant|>."""
    calls = []
    for part in text.split("<|assistant|>"):
        name, sep, args = part.partition("\n")
        if not sep or not name.strip() or " " in name.strip():
            return text, []
        try:
            calls.append(_call(name.strip(), json.loads(args)))
        except json.JSONDecodeError:
            return text, []
    return "", calls


_SMALL = re.compile(r"\[TOOL_CALLS\](.*?)\[CALL_ID\](.*?)\[ARGS\]")


def _mistral_small(text: str):
    """Mistral-Small-3.x: [TOOL_CALLS]name[CALL_ID]id[ARGS]{json}, repeated."""
    head, sep, _ = text.partition("[TOOL_CALLS]")
    if not sep:
        return text, []
    calls, decoder = [], json.JSONDecoder()
    pos = len(head)
    while pos < len(text):
        m = _SMALL.match(text, pos)
        if not m:
            return text, []
        try:
            args, end = decoder.raw_decode(text, m.end())
        except json.JSONDecodeError:
            return text, []
        calls.append(_call(m.group(1), args, m.group(2)))
        pos = end
    return head.rstrip(), calls


PARSERS = {"hermes": _hermes, "llama3_json": _llama_json, "mistral": _mistral, "deepseek": _deepseek,
           "deepseek_v3_1": _deepseek_v31, "glm4": _glm4,
           "mistral_small": _mistral_small}


def parse_tool_calls(text: str, fmt: str | None) -> tuple[str, list[dict]]:
    if fmt is None:
        return text, []
    return PARSERS[fmt](text)
