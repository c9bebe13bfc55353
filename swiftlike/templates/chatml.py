"""ChatML renderers for the Qwen families, written to match the official Jinja templates.

`render_chatml` (Qwen3 and its 2507 revisions) reads these options from the spec:
  generation_suffix   text after '<|im_start|>assistant\\n' in the generation prompt
  hybrid_thinking     honour enable_thinking=False by pre-filling an empty think block
  strict_strings      2507 revisions: non-string content renders as '' and reasoning must be a str
  plain_assistant     Qwen3-VL-Instruct: assistant content as given (no think block, reasoning not rendered)
  drop_later_system   Qwen3-VL-Instruct: a system message other than the first renders nothing
`render_qwen2` (Qwen2.5, QwQ) reads:
  default_system      system text used when the conversation has none (Qwen2.5), or None
  think_history       QwQ: earlier assistant turns keep only the text after '</think>'
  inline_reasoning    QwQ: a message's `reasoning` is written into its content as <think>...</think>
"""
from __future__ import annotations

import json

from .base import Segments, TemplateSpec
from .messages import parsed_arguments

_TOOLS_HEAD = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
               "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
_TOOLS_TAIL = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments "
               "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
               "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n")
EMPTY_THINK = "<think>\n\n</think>\n\n"


def tojson(value) -> str:
    """Same output as transformers' chat-template `tojson` filter."""
    return json.dumps(value, ensure_ascii=False)


def _text(value, strict: bool) -> str:
    if isinstance(value, str):
        return value
    if strict or value is None:
        return ""
    return str(value)


def _is_tool_response(content) -> bool:
    return isinstance(content, str) and content.startswith("<tool_response>") and content.endswith("</tool_response>")


def _last_query_index(messages: list[dict]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m["role"] == "user" and isinstance(m.get("content"), str) and not _is_tool_response(m["content"]):
            return i
    return len(messages) - 1


def split_reasoning(message: dict, strict: bool) -> tuple[str, str]:
    """(reasoning, content) as the official template derives them."""
    content = _text(message.get("content"), strict)
    reasoning = message.get("reasoning")
    if isinstance(reasoning, str):
        return reasoning, content
    if reasoning is not None and not strict:
        return str(reasoning), content
    if "</think>" in content:
        head, tail = content.split("</think>")[0], content.split("</think>")[-1]
        return head.rstrip("\n").split("<think>")[-1].lstrip("\n"), tail.lstrip("\n")
    return "", content


def format_tool_calls(tool_calls: list[dict], content: str) -> str:
    out = []
    for j, call in enumerate(tool_calls):
        if j > 0 or content:
            out.append("\n")
        fn = call.get("function") or call
        args = fn.get("arguments")  # (a string as given: the official Jinja prints it so)
        out.append('<tool_call>\n{"name": "' + fn["name"] + '", "arguments": '
                   + (args if isinstance(args, str) else tojson(args)) + "}\n</tool_call>")
    return "".join(out)


def render_chatml(spec: TemplateSpec, messages: list[dict], tools: list | None,
                  add_generation_prompt: bool, enable_thinking: bool | None = None, **_) -> Segments:
    opt = spec.options
    strict = opt.get("strict_strings", False)
    segs: Segments = []
    first_is_system = bool(messages) and messages[0]["role"] == "system"
    if tools:
        system = _text(messages[0].get("content"), strict) + "\n\n" if first_is_system else ""
        segs.append(("<|im_start|>system\n" + system + _TOOLS_HEAD
                     + "".join("\n" + tojson(t) for t in tools) + _TOOLS_TAIL, False))
    elif first_is_system:
        segs.append(("<|im_start|>system\n" + _text(messages[0].get("content"), strict) + "<|im_end|>\n", False))

    last_query = _last_query_index(messages)
    n = len(messages)
    for i, m in enumerate(messages):
        role = m["role"]
        trained = m.get("loss")
        if role == "system" and i > 0 and opt.get("drop_later_system"):
            continue
        if role == "user" or (role == "system" and i > 0):
            segs.append((f"<|im_start|>{role}\n" + _text(m.get("content"), strict) + "<|im_end|>\n", bool(trained)))
        elif role == "assistant":
            reasoning, content = split_reasoning(m, strict)
            if opt.get("plain_assistant"):
                body = content = _text(m.get("content"), strict)
            elif i > last_query and (i == n - 1 or reasoning):
                body = "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
            else:
                body = content
            if m.get("tool_calls"):
                body += format_tool_calls(m["tool_calls"], content)
            segs.append(("<|im_start|>assistant\n", False))
            segs.append((body + "<|im_end|>", trained is not False))
            segs.append(("\n", False))
        elif role == "tool":
            text = "<|im_start|>user" if i == 0 or messages[i - 1]["role"] != "tool" else ""
            text += "\n<tool_response>\n" + _text(m.get("content"), strict) + "\n</tool_response>"
            if i == n - 1 or messages[i + 1]["role"] != "tool":
                text += "<|im_end|>\n"
            segs.append((text, bool(trained)))
    if add_generation_prompt:
        suffix = opt.get("generation_suffix", "")
        if opt.get("hybrid_thinking") and enable_thinking is False:
            suffix += EMPTY_THINK
        segs.append(("<|im_start|>assistant\n" + suffix, False))
    return segs


def _inline_reasoning(m: dict) -> str:
    """Templates without a reasoning field (QwQ, DeepSeek-R1) expect it inline in the content."""
    content = m.get("content") or ""
    if m.get("reasoning"):
        return "<think>\n" + m["reasoning"].strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
    return content


def render_qwen2(spec: TemplateSpec, messages: list[dict], tools: list | None,
                 add_generation_prompt: bool, **_) -> Segments:
    opt = spec.options
    default_system = opt.get("default_system")
    segs: Segments = []
    first_is_system = bool(messages) and messages[0]["role"] == "system"
    system = messages[0].get("content") or "" if first_is_system else default_system
    if tools:
        segs.append(("<|im_start|>system\n" + (system or "") + "\n\n" + _TOOLS_HEAD
                     + "".join("\n" + tojson(t) for t in tools) + _TOOLS_TAIL, False))
    elif system is not None:
        segs.append(("<|im_start|>system\n" + system + "<|im_end|>\n", False))
    n = len(messages)
    for i, m in enumerate(messages):
        role, trained = m["role"], m.get("loss")
        if role == "user" or (role == "system" and i > 0):
            segs.append((f"<|im_start|>{role}\n" + (m.get("content") or "") + "<|im_end|>\n", bool(trained)))
        elif role == "assistant":
            content = _inline_reasoning(m) if opt.get("inline_reasoning") else m.get("content") or ""
            if opt.get("think_history") and i != n - 1:
                content = content.split("</think>")[-1].lstrip("\n")
            if m.get("tool_calls"):
                head = "<|im_start|>assistant"
                shown = m.get("content") or (opt.get("inline_reasoning") and m.get("reasoning"))  # (QwQ's inline)
                body = ("\n" + content if shown else "") + "".join(
                    '\n<tool_call>\n{"name": "' + (c.get("function") or c)["name"] + '", "arguments": '
                    + tojson(parsed_arguments(c.get("function") or c)) + "}\n</tool_call>" for c in m["tool_calls"])
            else:
                head, body = "<|im_start|>assistant\n", content
            segs += [(head, False), (body + "<|im_end|>", trained is not False), ("\n", False)]
        elif role == "tool":
            text = "<|im_start|>user" if i == 0 or messages[i - 1]["role"] != "tool" else ""
            text += "\n<tool_response>\n" + (m.get("content") or "") + "\n</tool_response>"
            if i == n - 1 or messages[i + 1]["role"] != "tool":
                text += "<|im_end|>\n"
            segs.append((text, bool(trained)))
    if add_generation_prompt:
        segs.append(("<|im_start|>assistant\n" + opt.get("generation_suffix", ""), False))
    return segs
