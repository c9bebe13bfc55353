"""GLM-4-9B-chat: "[gMASK]<sop>", then <|role|>{metadata}\\n{content} per message; tool results use the
observation role and a tool call is an assistant turn whose metadata is the function name.

GLM-4 has no end-of-turn token: the model stops by emitting the next role token (<|user|> or
<|observation|>, both in its eos list). So each assistant turn is trained together with the role token
that follows it, and a chat ending with an assistant turn gets a trained "<|user|>" appended — the one
place where our training text extends the official template's.
"""
from __future__ import annotations

import json

from .base import Segments, TemplateSpec

_TOOLS_HEAD = ("<|system|>\n你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
               "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具")


def _tools(tools: list) -> str:
    out = [_TOOLS_HEAD]
    for tool in tools:
        if tool.get("type", "function") == "function":
            fn = tool.get("function", tool)
            out.append(f"\n## {fn['name']}\n\n" + json.dumps(fn, ensure_ascii=False, indent=4)
                       + "\n在调用上述函数时，请使用 Json 格式表示调用的参数。")
    return "".join(out)


def glm_items(messages: list[dict]) -> list[tuple[str, str, str, dict]]:
    """(role, metadata, content, message) items as GLM-4 sees them."""
    items = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            if m.get("content"):
                items.append(("assistant", "", m["content"], m))
            for call in m["tool_calls"]:
                fn = call.get("function") or call
                args = fn.get("arguments")
                items.append(("assistant", fn["name"],
                              args if isinstance(args, str) else json.dumps(args, ensure_ascii=False), m))
        else:
            items.append(("observation" if m["role"] == "tool" else m["role"], "", m.get("content") or "", m))
    return items


def _role_token(segs: Segments, token: str, ends_trained_turn: bool) -> None:
    """A role token; one that ends a trained assistant turn is part of that turn's segment (a turn is one trained
    segment, as --loss_scope last_assistant reads them: the answer with what ends it)."""
    if ends_trained_turn:
        segs[-1] = (segs[-1][0] + token, True)
    else:
        segs.append((token, False))


def render_glm4(spec: TemplateSpec, messages: list[dict], tools: list | None, add_generation_prompt: bool,
                **_) -> Segments:
    segs: Segments = [("[gMASK]<sop>" + (_tools(tools) if tools else ""), False)]
    after_assistant, called = False, False
    for role, metadata, content, m in glm_items(messages):
        if not content:
            continue
        trained = m.get("loss") is not False
        if role == "assistant":
            _role_token(segs, "<|assistant|>", after_assistant)
            if after_assistant and trained:  # (a tool call's next part: the same turn)
                segs[-1] = (segs[-1][0] + metadata + "\n" + content, True)
            else:
                segs.append((metadata + "\n" + content, trained))
            after_assistant, called = trained, bool(metadata)
        else:
            _role_token(segs, f"<|{role}|>", after_assistant)
            segs.append(("\n" + content, bool(m.get("loss"))))
            after_assistant = False
    if add_generation_prompt:
        _role_token(segs, "<|assistant|>", after_assistant)
    elif after_assistant:  # what the model writes next: a tool call is answered by the observation
        _role_token(segs, "<|observation|>" if called else "<|user|>", True)
    return segs


GLM4 = TemplateSpec("glm4", render_glm4, ("<|user|>", "<|observation|>", "<|endoftext|>"), {"tool_format": "glm4"},
                    "GLM-4-9B-chat: the next role token ends an assistant turn; tool calls name the function")

SPECS = [GLM4]
