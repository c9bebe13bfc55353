"""One streamed choice: generated text as it arrives -> reasoning and content deltas, tool calls at the end.

The whole text is what counts: when the choice finishes it is read exactly as a non-streamed answer is
(the template's `parse_response`). While it streams, text that may still turn out to be something else is
held back — the beginning of a `</think>` or of a tool-call marker, the whitespace the parsers strip before a
call — so that what was sent is a prefix of the final reasoning and content.
"""
from __future__ import annotations

from ..templates.call_grammar import THINK_CLOSE, THINK_OPEN

# Where a tool call may begin in each family's format; None: the whole answer may be a call (JSON-only formats).
TOOL_CALL_STARTS = {"hermes": "<tool_call>", "mistral": "[TOOL_CALLS]", "mistral_small": "[TOOL_CALLS]",
                    "deepseek": "<｜tool▁calls▁begin｜>", "deepseek_v3_1": "<｜tool▁calls▁begin｜>",
                    "llama3_json": None, "glm4": None}


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0


def without_tool_parser(template):
    """The same template reading answers without a tool-call parser (for requests that offered no tools)."""
    import dataclasses

    from ..templates import Template

    spec = template.spec
    return Template(dataclasses.replace(spec, options={**spec.options, "tool_format": None}), template.tokenizer)


class ChoiceStream:
    def __init__(self, parser, tool_format: str | None, in_think: bool):
        """`parser`: a Template whose parse_response reads the whole text (with or without tool calls);
        `tool_format`: the format to hold back for (None when the request offered no tools)."""
        self.parser = parser
        self.tool_format = tool_format
        self.in_think = in_think
        self.text = ""
        self.sent_reasoning = ""
        self.sent_content = ""

    def feed(self, text: str) -> tuple[str, str]:
        """New text -> (reasoning delta, content delta) safe to send now."""
        self.text += text
        reasoning, content = self._stable(self.text)
        return self._advance(reasoning, content)

    def finish(self) -> tuple[str, str, list[dict]]:
        """The rest of the reasoning and content, and the tool calls, read from the whole text."""
        parsed = self.parser.parse_response(self.text, self.in_think)
        reasoning, content = self._advance(parsed.get("reasoning", ""), parsed["content"])
        return reasoning, content, parsed.get("tool_calls", [])

    def _advance(self, reasoning: str, content: str) -> tuple[str, str]:
        out = []
        for attr, now in (("sent_reasoning", reasoning), ("sent_content", content)):
            sent = getattr(self, attr)
            if now.startswith(sent) and len(now) > len(sent):
                out.append(now[len(sent):])
                setattr(self, attr, now)
            else:
                out.append("")
        return out[0], out[1]

    def _stable(self, text: str) -> tuple[str, str]:
        head = text.lstrip()
        if not self.in_think and THINK_OPEN.startswith(head):   # may still become "<think>"
            return "", ""
        if self.in_think or head.startswith(THINK_OPEN):
            if THINK_CLOSE not in text:
                body = head[len(THINK_OPEN):] if head.startswith(THINK_OPEN) else text
                body = body.lstrip("\n")
                body = body[:len(body) - _partial_suffix(body, THINK_CLOSE)]
                return body.rstrip("\n"), ""
            head_part, tail = text.split(THINK_CLOSE, 1)
            reasoning = head_part.rstrip("\n").split(THINK_OPEN)[-1].lstrip("\n")
            return reasoning, self._stable_content(tail.lstrip("\n"))
        return "", self._stable_content(text)

    def _stable_content(self, content: str) -> str:
        if self.tool_format is None:
            return content
        start = TOOL_CALL_STARTS.get(self.tool_format)
        if start is None:
            return ""                                   # the whole answer may be a call: send it at the end
        content = content.split(start, 1)[0]
        content = content[:len(content) - _partial_suffix(content, start)]
        return content.rstrip()
