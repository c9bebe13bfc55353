"""DeepSeek templates: V3 (0324 revision), V3.1 (hybrid thinking), R1 and R1-Distill (Qwen/Llama).

The official R1 templates strip reasoning from every assistant turn, the last one included. Training a
reasoning model on that text would teach it to answer without thinking, so for the FINAL assistant
turn only we render what the model generates after the generation prompt: its reasoning in
<think>...</think>, then the answer. Earlier turns lose their reasoning exactly as officially. A chat
whose final turn carries no reasoning renders exactly as the official template.
"""
from __future__ import annotations

import json

from .base import Segments, TemplateSpec
from .chatml import split_reasoning
from .errors import TemplateError

EOS = "<｜end▁of▁sentence｜>"
_TOOL = "<｜tool▁call▁begin｜>{type}<｜tool▁sep｜>{name}\n```json\n{args}\n```<｜tool▁call▁end｜>"
_TOOL_V31 = "<｜tool▁call▁begin｜>{name}<｜tool▁sep｜>{args}<｜tool▁call▁end｜>"


def _args(fn: dict) -> str:
    args = fn.get("arguments")  # (a string as given: the official Jinja prints it so)
    return args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)


def _calls(m: dict, pattern: str, joiner: str) -> str:
    out = []
    for call in m["tool_calls"]:
        fn = call.get("function") or call
        out.append(pattern.format(type=call.get("type", "function"), name=fn["name"], args=_args(fn)))
    return "<｜tool▁calls▁begin｜>" + joiner.join(out) + "<｜tool▁calls▁end｜>" + EOS


def _system(messages: list[dict], join: bool) -> str:
    systems = [m.get("content") or "" for m in messages if m["role"] == "system"]
    if not systems:
        return ""
    return "\n\n".join(systems) if join else systems[-1]


def _final_with_reasoning(m: dict, is_last: bool) -> tuple[str, str]:
    """(reasoning, answer) for an assistant turn; reasoning survives on the final turn only."""
    reasoning, content = split_reasoning({"content": m.get("content") or "", "reasoning": m.get("reasoning")},
                                         strict=False)
    if not is_last:
        return "", (m.get("content") or "").split("</think>")[-1]
    return reasoning, content if reasoning else (m.get("content") or "").split("</think>")[-1]


def render_r1(spec: TemplateSpec, messages: list[dict], tools: list | None, add_generation_prompt: bool,
              **_) -> Segments:
    """DeepSeek-R1 (join="\\n\\n" systems, tool outputs without newlines) and R1-Distill (last system wins)."""
    o = spec.options
    distill = o.get("distill", False)
    segs: Segments = [("<｜begin▁of▁sentence｜>" + _system(messages, join=not distill), False)]
    is_tool = is_first = False
    output_first = True
    last = len(messages) - 1  # reasoning survives only on an assistant turn that ends the chat
    for i, m in enumerate(messages):
        role, trained = m["role"], m.get("loss")
        if role == "user":
            is_tool = False
            segs.append(("<｜User｜>" + (m.get("content") or ""), bool(trained)))
        elif role == "assistant" and m.get("tool_calls"):
            if distill:
                raise TemplateError("DeepSeek-R1-Distill's official template renders a single tool call without any "
                                    "end token; swiftlike does not train tool calls with it")
            is_tool = False
            if is_first:  # the official template never resets this flag: later call turns lose their header
                head, body = "", "\n" + _calls(m, _TOOL, "\n").replace("<｜tool▁calls▁begin｜>", "", 1)
            else:
                head, body = "<｜Assistant｜>", (m.get("content") or "") + _calls(m, _TOOL, "\n")
            is_first = True
            segs += [(head, False), (body, trained is not False)]
        elif role == "assistant":
            if is_tool:
                segs += [("<｜tool▁outputs▁end｜>", False),
                         ((m.get("content") or "") + EOS, trained is not False)]
                is_tool = False
                continue
            reasoning, answer = _final_with_reasoning(m, i == last)
            head, body = "<｜Assistant｜>", answer
            if reasoning:
                opener = o.get("think_opener", "")
                head += opener
                body = ("" if opener else "<think>\n") + reasoning.strip("\n") + "\n</think>\n\n" + answer.lstrip("\n")
            segs += [(head, False), (body + EOS, trained is not False)]
        elif role == "tool":
            is_tool = True
            sep = "\n" if distill and not output_first else ""
            text = ("<｜tool▁outputs▁begin｜>" if output_first else sep) + "<｜tool▁output▁begin｜>" + \
                (m.get("content") or "") + "<｜tool▁output▁end｜>"
            output_first = False
            segs.append((text, bool(trained)))
    if is_tool:
        segs.append(("<｜tool▁outputs▁end｜>", False))
    if add_generation_prompt and not is_tool:
        segs.append(("<｜Assistant｜>" + o.get("think_opener", ""), False))
    return segs


def render_v3(spec: TemplateSpec, messages: list[dict], tools: list | None, add_generation_prompt: bool,
              **_) -> Segments:
    """DeepSeek-V3-0324: the user turn already opens the assistant turn."""
    segs: Segments = [("<｜begin▁of▁sentence｜>" + _system(messages, join=True), False)]
    is_tool = is_last_user = False
    output_first = True
    for m in messages:
        role, trained = m["role"], m.get("loss")
        if role == "user":
            is_tool, is_last_user = False, True
            segs.append(("<｜User｜>" + (m.get("content") or "") + "<｜Assistant｜>", bool(trained)))
        elif role == "assistant":
            is_last_user = False
            if is_tool:
                segs.append(("<｜tool▁outputs▁end｜>", False))
            if m.get("tool_calls"):
                body = (m.get("content") or "") + _calls(m, _TOOL, "\n")
                output_first = True
            else:
                body = (m.get("content") or "") + EOS
            is_tool = False
            segs.append((body, trained is not False))
        elif role == "tool":
            is_last_user, is_tool = False, True
            segs.append((("<｜tool▁outputs▁begin｜>" if output_first else "\n") + "<｜tool▁output▁begin｜>"
                         + (m.get("content") or "") + "<｜tool▁output▁end｜>", bool(trained)))
            output_first = False
    if is_tool:
        segs.append(("<｜tool▁outputs▁end｜>", False))
    if add_generation_prompt and not is_last_user and not is_tool:
        segs.append(("<｜Assistant｜>", False))
    return segs


def render_v31(spec: TemplateSpec, messages: list[dict], tools: list | None, add_generation_prompt: bool,
               thinking: bool = False, **_) -> Segments:
    """DeepSeek-V3.1: `thinking` switches the generation prompt between </think> and <think>."""
    segs: Segments = [("<｜begin▁of▁sentence｜>" + _system(messages, join=True), False)]
    is_tool = is_last_user = False
    last = len(messages) - 1
    for i, m in enumerate(messages):
        role, trained = m["role"], m.get("loss")
        if role == "user":
            is_tool, is_last_user = False, True
            segs.append(("<｜User｜>" + (m.get("content") or ""), bool(trained)))
        elif role == "assistant" and m.get("tool_calls"):
            head = "<｜Assistant｜></think>" if is_last_user else ""
            is_last_user = is_tool = False
            segs += [(head, False), ((m.get("content") or "") + _calls(m, _TOOL_V31, ""), trained is not False)]
        elif role == "assistant":
            reasoning, answer = ("", "") if is_tool else _final_with_reasoning(m, i == last)
            head = ""
            if is_last_user:
                head = "<｜Assistant｜>" + ("<think>" if reasoning else "</think>")
            is_last_user = False
            if is_tool:
                body = m.get("content") or ""
                is_tool = False
            else:
                content = m.get("content") or ""
                body = reasoning + "</think>" + answer if reasoning else \
                    (content.split("</think>", 1)[1] if "</think>" in content else content)
            segs += [(head, False), (body + EOS, trained is not False)]
        elif role == "tool":
            is_last_user, is_tool = False, True
            segs.append(("<｜tool▁output▁begin｜>" + (m.get("content") or "") + "<｜tool▁output▁end｜>", bool(trained)))
    if add_generation_prompt and is_last_user and not is_tool:
        segs.append(("<｜Assistant｜>" + ("<think>" if thinking else "</think>"), False))
    return [s for s in segs if s[0]]


_STOP = (EOS,)
DEEPSEEK_V3 = TemplateSpec("deepseek_v3", render_v3, _STOP, {"tool_format": "deepseek"},
                           "DeepSeek-V3 (0324 revision)")
DEEPSEEK_V3_1 = TemplateSpec("deepseek_v3_1", render_v31, _STOP, {"tool_format": "deepseek_v3_1"},
                             "DeepSeek-V3.1 hybrid thinking (thinking=True opens <think>)")
DEEPSEEK_R1 = TemplateSpec("deepseek_r1", render_r1, _STOP, {"tool_format": "deepseek"},
                           "DeepSeek-R1 (January 2025 revision): generation prompt <｜Assistant｜>")
DEEPSEEK_R1_DISTILL = TemplateSpec("deepseek_r1_distill", render_r1, _STOP,
                                   {"distill": True, "think_opener": "<think>\n"},
                                   "DeepSeek-R1-Distill-Qwen/Llama (later revision): generation prompt opens <think>")

SPECS = [DEEPSEEK_V3, DEEPSEEK_V3_1, DEEPSEEK_R1, DEEPSEEK_R1_DISTILL]
