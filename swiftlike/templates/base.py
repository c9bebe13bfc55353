"""Template: render a canonical conversation to text segments, then tokenize once with offsets.

Why offsets instead of tokenizing segment by segment: BPE merges can cross segment borders
(e.g. a newline that ends a header and one that starts the content), so per-segment ids can
differ from the ids of the whole text. We tokenize the exact text the official chat template
would produce, in one pass, and mark a token as trained when it starts inside a trained span.
That makes `input_ids` equal to `tokenizer(official_text)` by construction.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .errors import TemplateError
from .messages import IMAGE, normalize_messages

IGNORE_INDEX = -100

# A rendered conversation: consecutive (text, trained) pieces.
Segments = list[tuple[str, bool]]


@dataclass(frozen=True)
class TemplateSpec:
    """A family's template declared as data plus one render function shared by the family."""

    name: str
    render: Callable[..., Segments]  # render(spec, messages, tools, add_generation_prompt, **opts)
    stop_words: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)  # family-specific knobs read by render
    description: str = ""


class Template:
    """A template bound to a tokenizer. `encode(row)` -> {input_ids, labels, length}."""

    def __init__(self, spec: TemplateSpec, tokenizer, loss_scope: str = "assistant"):
        if loss_scope not in LOSS_SCOPES:
            from ..errors import UserError

            raise UserError(f"loss_scope {loss_scope!r} is not one of {', '.join(LOSS_SCOPES)}")
        self.spec = spec
        self.tokenizer = tokenizer
        self.loss_scope = loss_scope
        self._backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
        self.stop_token_ids = [i for w in spec.stop_words if (i := tokenizer.convert_tokens_to_ids(w)) is not None
                               and i != getattr(tokenizer, "unk_token_id", None)]

    @property
    def name(self) -> str:
        return self.spec.name

    # -- text -------------------------------------------------------------------------------
    @property
    def vision(self) -> dict | None:
        """What a vision-language template writes for an image (None: a text-only template)."""
        return self.spec.options.get("vision")

    @functools.cached_property
    def image_token_ids(self) -> tuple[int, tuple[int, int]] | None:
        """(the image pad token's id, (span start id, span end id)) of a vision-language template, else None."""
        if self.vision is None:
            return None
        ids = self.tokenizer.convert_tokens_to_ids
        return ids(self.vision["image_pad"]), tuple(ids(t) for t in self.vision["span"])

    def render(self, messages: Sequence[dict], tools: list | None = None,
               add_generation_prompt: bool = False, images: Sequence[str] | None = None, **opts) -> Segments:
        """Text pieces and whether each is trained; messages are read as the data layer reads them
        (templates/messages.py: `reasoning_content`, typed content parts, `loss_weight`, ...). `images`: a row's
        image list for the IMAGE placeholders in its messages (the ms-swift / LLaMA-Factory form)."""
        messages = self._with_images(normalize_messages(messages), images)
        segments = self.spec.render(self.spec, messages, tools, add_generation_prompt, **opts)
        return _apply_loss_scope(segments, self.loss_scope)

    def _with_images(self, messages: list[dict], images: Sequence[str] | None) -> list[dict]:
        """Messages whose IMAGE placeholders are this template's image text; refused when they cannot be."""
        given = len(images or ()) + sum(len(m.get("images", ())) for m in messages)
        if self.vision is None:
            if given:
                raise TemplateError(f"template {self.name} is text-only and cannot read images; train a "
                                    "vision-language model (e.g. Qwen/Qwen2.5-VL-7B-Instruct, Qwen/Qwen3-VL-8B-Instruct)")
            return messages
        placed = sum(m["content"].count(IMAGE) for m in messages if m["role"] in ("user", "tool"))
        stray = [i for i, m in enumerate(messages) if m["role"] not in ("user", "tool") and IMAGE in m["content"]]
        if stray and (given or placed):
            raise TemplateError(f"message {stray[0]} ({messages[stray[0]]['role']}) holds an {IMAGE} placeholder; "
                                "images belong to user or tool messages")
        if placed != given:
            raise TemplateError(f"{placed} {IMAGE} placeholder(s) in the messages but {given} image(s) given")
        return [{**m, "content": m["content"].replace(IMAGE, self.vision["image"])}
                if m["role"] in ("user", "tool") and IMAGE in m["content"] else m for m in messages]

    def render_text(self, messages: Sequence[dict], tools: list | None = None,
                    add_generation_prompt: bool = False, **opts) -> str:
        return "".join(t for t, _ in self.render(messages, tools, add_generation_prompt, **opts))

    # -- ids --------------------------------------------------------------------------------
    def encode(self, row: dict, **opts) -> dict:
        return self.encode_batch([row], **opts)[0]

    def encode_batch(self, rows: Sequence[dict], **opts) -> list[dict]:
        rendered = [self.render(r["messages"], r.get("tools"), False, r.get("images"), **opts) for r in rows]
        texts = ["".join(t for t, _ in segs) for segs in rendered]
        encodings = self._tokenize(texts)
        out = []
        for segs, (ids, starts) in zip(rendered, encodings):
            labels = _mask_labels(ids, starts, _trained_spans(segs))
            out.append({"input_ids": ids, "labels": labels, "length": len(ids)})
        return out

    def parse_response(self, text: str) -> dict:
        """Generated text -> an assistant message: reasoning split off, tool calls parsed (OpenAI style)."""
        from .chatml import split_reasoning
        from .toolcalls import parse_tool_calls

        reasoning, content = split_reasoning({"content": text}, strict=True)
        if "<think>" not in text and "</think>" not in text:
            reasoning, content = "", text
        content, calls = parse_tool_calls(content, self.spec.options.get("tool_format"))
        message = {"role": "assistant", "content": content}
        if reasoning.strip():
            message["reasoning"] = reasoning
        if calls:
            message["tool_calls"] = calls
        return message

    def encode_prompt(self, messages: Sequence[dict], tools: list | None = None, **opts) -> list[int]:
        """Ids of a conversation followed by the generation prompt (for inference)."""
        return self._tokenize([self.render_text(messages, tools, True, **opts)])[0][0]

    def _tokenize(self, texts: list[str]) -> list[tuple[list[int], list[int]]]:
        if self._backend is not None:
            encs = self._backend.encode_batch(texts, add_special_tokens=False)
            return [(e.ids, [o[0] for o in e.offsets]) for e in encs]
        batch = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [(ids, [o[0] for o in offs]) for ids, offs in zip(batch["input_ids"], batch["offset_mapping"])]


LOSS_SCOPES = ("assistant", "last_assistant", "all")


def _apply_loss_scope(segments: Segments, scope: str) -> Segments:
    if scope == "assistant":
        return segments
    if scope == "all":
        return [(t, True) for t, _ in segments]
    last = max((i for i, (_, tr) in enumerate(segments) if tr), default=-1)
    return [(t, tr and i == last) for i, (t, tr) in enumerate(segments)]


def _trained_spans(segments: Segments) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for text, trained in segments:
        if trained and text:
            if spans and spans[-1][1] == pos:
                spans[-1] = (spans[-1][0], pos + len(text))
            else:
                spans.append((pos, pos + len(text)))
        pos += len(text)
    return spans


def _mask_labels(ids: list[int], starts: list[int], spans: list[tuple[int, int]]) -> list[int]:
    """Keep a token's id as its label when the token starts inside a trained span (one pass)."""
    labels, k = [IGNORE_INDEX] * len(ids), 0
    for i, start in enumerate(starts):
        while k < len(spans) and spans[k][1] <= start:
            k += 1
        if k == len(spans):
            break
        if spans[k][0] <= start:
            labels[i] = ids[i]
    return labels
