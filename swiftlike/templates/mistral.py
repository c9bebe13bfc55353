"""Mistral templates: v0.1 (Mixtral-8x7B), v0.3 (Mistral-7B-Instruct-v0.3), v3-tekken (Nemo) and Small-3.x.

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
from .messages import parsed_arguments

_ALTERNATE = "After the optional system message, conversation roles must alternate user/assistant/user/assistant/..."
_IDS = "Tool call IDs should be alphanumeric strings with length 9!"


def _check_alternation(messages: list[dict]) -> None:
    """After the system message, user and assistant turns alternate (tool calls and results aside)."""
    index = 0
    for m in messages:
        if not (m["role"] == "tool" or m.get("tool_calls")):
            if (m["role"] == "user") != (index % 2 == 0):
                raise TemplateError(_ALTERNATE)
            index += 1


def _last_user(messages: list[dict]) -> int:
    """The index of the last user message, the one the tools precede (as mistral_common writes them; the official
    Jinja compares messages by value, so an earlier user message equal to the last got a second tools block)."""
    return max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)


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
    _check_alternation(messages)
    last_user = _last_user(messages)
    segs: Segments = [("<s>", False)]
    for i, m in enumerate(messages):
        role, trained = m["role"], m.get("loss")
        if role == "user":
            text = _tools_block(tools, sep) if tools and i == last_user else ""
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
                calls.append(json.dumps({"name": fn["name"], "arguments": parsed_arguments(fn)},
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


# Mistral-Small-3.x default system prompt (3.2 wording); `{date}` is today's date as YYYY-MM-DD.
SMALL_DEFAULT_SYSTEM = ('You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI, a French startup headquartered in Paris.\nYour knowledge base was last updated on 2023-10-01. The current date is '
                        "{date}" + '.\n\nWhen you\'re not sure about some information or when the user\'s request requires up-to-date or specific data, you must use the available tools to fetch the information. Do not hesitate to use tools whenever they can provide a more accurate or complete response. If no relevant tools are available, then clearly state that you don\'t have the information and avoid making up anything.\n\nIf the user\'s question is not clear, ambiguous, or does not provide enough context for you to accurately answer the question, you do not try to answer it right away and you rather ask the user to clarify their request (e.g. "What are some good restaurants around me?" => "Where are you?" or "When is the next flight to Tokyo" => "Where do you travel from?").\nYou are always very attentive to dates, and when asked about information at specific dates, you discard information that is at another date.\nYou follow these instructions in all languages, and always respond to the user in the language they use or request.\nNext sections describe the capabilities that you have.\n\n# WEB BROWSING INSTRUCTIONS\n\nYou cannot perform any web search or access internet to open URLs, links etc. If it seems like the user is expecting you to do so, you clarify the situation and ask the user to copy paste the text directly in the chat.\n\n# MULTI-MODAL INSTRUCTIONS\n\nYou have the ability to read images, but you cannot generate images. You also cannot transcribe audio files or videos.\nYou cannot read nor transcribe audio files or videos.\n\n# TOOL CALLING INSTRUCTIONS\n\nYou may have access to tools that you can use to fetch information or perform actions. You must use these tools in the following situations:\n\n1. When the request requires up-to-date information.\n2. When the request requires specific data that you do not have in your knowledge base.\n3. When the request involves actions that you cannot perform without tools.\n\nAlways prioritize using tools to provide the most accurate and helpful response. If tools are not available, inform the user that you cannot perform the requested action at the moment.')


def render_mistral_small(spec: TemplateSpec, messages: list[dict], tools: list | None, add_generation_prompt: bool,
                         date_string: str | None = None, **_) -> Segments:
    """Mistral-Small-3.x: [SYSTEM_PROMPT] (a dated default when absent), [AVAILABLE_TOOLS] as JSON before the
    last user turn, [TOOL_CALLS]name[CALL_ID]id[ARGS]json tool calls."""
    import time

    system = SMALL_DEFAULT_SYSTEM.replace("{date}", date_string or time.strftime("%Y-%m-%d"))
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0].get("content") or "", messages[1:]
    last_user = _last_user(messages)
    _check_alternation(messages)
    segs: Segments = [("<s>[SYSTEM_PROMPT]" + system + "[/SYSTEM_PROMPT]", False)]
    for i, m in enumerate(messages):
        role, trained = m["role"], m.get("loss")
        if role == "system":
            segs.append(("[SYSTEM_PROMPT]" + (m.get("content") or "") + "[/SYSTEM_PROMPT]", bool(trained)))
        elif role == "user":
            tools_text = "[AVAILABLE_TOOLS]" + json.dumps(tools, ensure_ascii=False) + "[/AVAILABLE_TOOLS]" \
                if tools and i == last_user else ""
            segs.append((tools_text + "[INST]" + (m.get("content") or "") + "[/INST]", bool(trained)))
        elif role == "assistant" and m.get("tool_calls"):
            body = ""
            for call in m["tool_calls"]:
                if len(str(call.get("id", ""))) != 9:
                    raise TemplateError(_IDS)
                fn = call.get("function") or call
                body += ("[TOOL_CALLS]" + fn["name"] + "[CALL_ID]" + call["id"] + "[ARGS]"
                         + json.dumps(parsed_arguments(fn), ensure_ascii=False))
            segs.append((body + "</s>", trained is not False))
        elif role == "assistant":
            segs.append(((m.get("content") or "") + "</s>", trained is not False))
        elif role == "tool":
            call_id = str(m.get("tool_call_id", ""))
            if len(call_id) != 9:
                raise TemplateError(_IDS)
            segs.append(("[TOOL_RESULTS]" + call_id + "[TOOL_CONTENT]" + (m.get("content") or "") + "[/TOOL_RESULTS]",
                         bool(trained)))
        else:
            raise TemplateError("Only system, user, assistant, and tool roles are supported!")
    return segs


_STOP = ("</s>",)
MISTRAL_V1 = TemplateSpec("mistral_v1", render_mistral_v1, _STOP, {},
                          "Mistral/Mixtral v0.1: [INST] ... [/INST] answer</s>; strictly alternating, no system")
MISTRAL_V3 = TemplateSpec("mistral_v3", render_mistral, _STOP, {"tool_format": "mistral", "sep": " "},
                          "Mistral-7B-Instruct-v0.3: [INST] with spaces, [AVAILABLE_TOOLS]/[TOOL_CALLS]/[TOOL_RESULTS]")
MISTRAL_NEMO = TemplateSpec("mistral_nemo", render_mistral, _STOP, {"tool_format": "mistral", "sep": ""},
                            "Mistral-Nemo (v3-tekken): no spaces around [INST]")

MISTRAL_SMALL = TemplateSpec("mistral_small", render_mistral_small, _STOP, {"tool_format": "mistral_small"},
                             "Mistral-Small-3.1/3.2: [SYSTEM_PROMPT] with a dated default, JSON [AVAILABLE_TOOLS]")

SPECS = [MISTRAL_V1, MISTRAL_V3, MISTRAL_NEMO, MISTRAL_SMALL]
