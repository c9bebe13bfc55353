"""Role-marker templates declared as data: a header per turn, the content, an end-of-turn marker.

Covers Llama-3, Gemma-2/3, Phi-3.5/4, InternLM2.5/3, MiniCPM4 and Yi-1.5. Options (all optional):
  bos               literal text at the very start
  bos_if_first      only emit `bos` when the first message has one of these roles
  header            format string for a turn header, with {role}
  role_names        role -> name in the header (Gemma: assistant -> model)
  end, after_end    end-of-turn marker (trained on assistant turns) and what follows it (not trained)
  trim              strip whitespace around content (Jinja `| trim`)
  system            "turn" (a normal turn), "reject", "fold" (prefix of the first turn), "skip_empty"
  alternate         official error text when user/assistant turns must alternate
  roles             roles rendered at all; others are skipped (as the official templates do)
  final_eos         "unless_generation" or "after_assistant": the eos text some templates append
  eos               that eos text
"""
from __future__ import annotations

from .base import Segments, TemplateSpec
from .errors import TemplateError


def _no_tool_calls(spec: TemplateSpec, messages: list[dict], add_generation_prompt: bool) -> None:
    """These official templates drop an assistant turn's tool calls: a trained turn would teach an answer without
    them (an empty one, for a call alone), so training rows holding one are refused. A prompt's history (with the
    generation prompt: nothing is trained) renders as officially, without them."""
    if add_generation_prompt:
        return
    i = next((i for i, m in enumerate(messages)
              if m["role"] == "assistant" and m.get("tool_calls") and m.get("loss") is not False), None)
    if i is not None:
        raise TemplateError(f"message {i} has tool calls, which template {spec.name} has no format for (its "
                            "official template drops them); use a model whose template writes tool calls")


def _content(m: dict, trim: bool) -> str:
    text = m.get("content") or ""
    return text.strip() if trim else text


def render_turns(spec: TemplateSpec, messages: list[dict], tools: list | None,
                 add_generation_prompt: bool, **_) -> Segments:
    o = spec.options
    header, end, after = o["header"], o.get("end", ""), o.get("after_end", "")
    names, trim, system_mode = o.get("role_names", {}), o.get("trim", False), o.get("system", "turn")
    roles = o.get("roles")
    segs: Segments = []
    if o.get("bos") and (not o.get("bos_if_first") or (messages and messages[0]["role"] in o["bos_if_first"])):
        segs.append((o["bos"], False))
    prefix = ""
    if messages and messages[0]["role"] == "system":
        if system_mode == "reject":
            raise TemplateError("System role not supported")
        if system_mode == "fold":
            prefix = (messages[0].get("content") or "") + "\n\n"
            messages = messages[1:]
    if o.get("alternate"):
        for i, m in enumerate(messages):
            if (m["role"] == "user") != (i % 2 == 0):
                raise TemplateError(o["alternate"])
    _no_tool_calls(spec, messages, add_generation_prompt)  # (after the official template's own errors)
    for i, m in enumerate(messages):
        role = m["role"]
        if roles is not None and role not in roles:
            continue
        if role == "system" and system_mode == "skip_empty" and not m.get("content"):
            continue
        head = header.format(role=names.get(role, role))
        if i == 0 and prefix:
            head += prefix
        text = _content(m, trim)
        if role == "assistant":
            segs += [(head, False), (text + end, m.get("loss") is not False), (after, False)]
        else:
            segs.append((head + text + end + after, bool(m.get("loss"))))
    if add_generation_prompt:
        segs.append((header.format(role=names.get("assistant", "assistant")), False))
    elif o.get("final_eos") == "unless_generation" or (
            o.get("final_eos") == "after_assistant" and messages and messages[-1]["role"] == "assistant"):
        segs.append((o["eos"], False))
    return [s for s in segs if s[0]]


def render_yi(spec: TemplateSpec, messages: list[dict], tools: list | None, add_generation_prompt: bool,
              **_) -> Segments:
    """Yi-1.5: the system text is emitted raw; every user turn already opens the assistant turn."""
    _no_tool_calls(spec, messages, add_generation_prompt)
    segs: Segments = []
    if messages and messages[0]["role"] == "system":
        segs.append((messages[0].get("content") or "", False))
    for m in messages:
        if m["role"] == "user":
            segs.append(("<|im_start|>user\n" + (m.get("content") or "") + "<|im_end|>\n<|im_start|>assistant\n",
                         bool(m.get("loss"))))
        elif m["role"] == "assistant":
            segs += [((m.get("content") or "") + "<|im_end|>", m.get("loss") is not False), ("\n", False)]
    return [s for s in segs if s[0]]
