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
from .messages import IMAGE, VIDEO, misplaced_media, normalize_messages

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

    @functools.cached_property
    def video_token_id(self) -> int | None:
        """The video pad token's id of a vision-language template that reads videos, else None."""
        pad = (self.vision or {}).get("video_pad")
        return self.tokenizer.convert_tokens_to_ids(pad) if pad else None

    def render(self, messages: Sequence[dict], tools: list | None = None,
               add_generation_prompt: bool = False, images: Sequence[str] | None = None, videos: Sequence | None = None,
               video_texts: Sequence[str] | None = None, **opts) -> Segments:
        """Text pieces and whether each is trained; messages are read as the data layer reads them
        (templates/messages.py: `reasoning_content`, typed content parts, `loss_weight`, ...). `images` / `videos`:
        a row's lists for the IMAGE / VIDEO placeholders in its messages (the ms-swift / LLaMA-Factory form);
        `video_texts`: each video's expanded text (`video_text`), else the official template's bare video span."""
        messages = normalize_messages(messages)
        if self.vision is not None:
            self._no_typed_vision_tokens(messages)
        messages = self._with_media(messages, IMAGE, "images", images)
        messages = self._with_media(messages, VIDEO, "videos", videos, video_texts)
        segments = self.spec.render(self.spec, messages, tools, add_generation_prompt, **opts)
        return _apply_loss_scope(segments, self.loss_scope)

    def _no_typed_vision_tokens(self, messages: list[dict]) -> None:
        """The tokens the template writes for images and videos may not be typed in a message."""
        own = (self.vision["image_pad"], self.vision["video_pad"], *self.vision["span"])
        typed = next(((i, t) for i, m in enumerate(messages) for t in own if t in m["content"]), None)
        if typed:
            raise TemplateError(f"message {typed[0]} ({messages[typed[0]]['role']}) holds {typed[1]}, a token the "
                                f"template writes itself for images and videos; write {IMAGE} (or {VIDEO}) where "
                                "one goes")

    def _with_media(self, messages: list[dict], marker: str, key: str, given: Sequence | None,
                    texts: Sequence[str] | None = None) -> list[dict]:
        """Messages whose IMAGE (VIDEO) placeholders are this template's image (video) text; refused when they
        cannot be."""
        count = len(given or ()) + sum(len(m.get(key, ())) for m in messages)
        if self.vision is None:
            if count:
                raise TemplateError(f"template {self.name} is text-only and cannot read {key}; train a vision-"
                                    "language model (e.g. Qwen/Qwen2.5-VL-7B-Instruct, Qwen/Qwen3-VL-8B-Instruct)")
            return messages
        problem = misplaced_media(messages, marker, key, count)
        if problem:
            raise TemplateError(problem)
        if not count:
            return messages
        bare = self.vision[key[:-1]]
        texts = iter(texts if texts is not None else [bare] * count)
        return [{**m, "content": "".join(p if i == 0 else next(texts) + p
                                         for i, p in enumerate(m["content"].split(marker)))}
                if m["role"] in ("user", "tool") and marker in m["content"] else m for m in messages]

    def video_text(self, grid: Sequence[int], merge: int, timestamps: Sequence[float] = ()) -> str:
        """A video's text as the model's processor writes it: a pad token per video token, in one span
        (Qwen2.5-VL) or one span per temporal patch after its time, "<1.4 seconds>" (Qwen3-VL)."""
        (start, end), pad = self.vision["span"], self.vision["video_pad"]
        per_patch = grid[1] * grid[2] // (merge * merge)
        if self.vision.get("video_timestamps"):
            return "".join(f"<{t:.1f} seconds>{start}{pad * per_patch}{end}" for t in timestamps)
        return start + pad * (grid[0] * per_patch) + end

    def render_text(self, messages: Sequence[dict], tools: list | None = None,
                    add_generation_prompt: bool = False, **opts) -> str:
        return "".join(t for t, _ in self.render(messages, tools, add_generation_prompt, **opts))

    # -- ids --------------------------------------------------------------------------------
    def encode(self, row: dict, **opts) -> dict:
        return self.encode_batch([row], **opts)[0]

    def encode_batch(self, rows: Sequence[dict], **opts) -> list[dict]:
        rendered = [self.render(r["messages"], r.get("tools"), False, r.get("images"), r.get("videos"),
                                r.get("video_texts"), **opts) for r in rows]
        texts = ["".join(t for t, _ in segs) for segs in rendered]
        encodings = self._tokenize(texts)
        out = []
        for segs, (ids, starts) in zip(rendered, encodings):
            labels = _mask_labels(ids, starts, _trained_spans(segs))
            out.append({"input_ids": ids, "labels": labels, "length": len(ids)})
        return out

    def parse_response(self, text: str, in_think: bool = False) -> dict:
        """Generated text -> an assistant message: reasoning split off, tool calls parsed (OpenAI style). `in_think`:
        the prompt opened a think block (call_grammar.prompt_think); an answer cut short inside one (no `</think>`
        yet) is all reasoning."""
        from .chatml import split_reasoning
        from .toolcalls import parse_tool_calls

        head = text.lstrip()
        if "</think>" not in text and (in_think or head.startswith("<think>")):
            body = head[len("<think>"):] if head.startswith("<think>") else text
            return {"role": "assistant", "content": "", "reasoning": body.lstrip("\n")}
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

    def read_answer(self, prompt_ids: list[int], text: str, finish_reason: str) -> dict:
        """A completion of `prompt_ids` as an assistant message (parse_response): an answer cut by its budget inside
        the think block its prompt opened is all reasoning; one that finished without closing it is an answer."""
        from .call_grammar import prompt_think

        cut = finish_reason == "length" and prompt_think(self.tokenizer, prompt_ids) == "open"
        return self.parse_response(text, cut)

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
    last = max((i for i, (_, tr) in enumerate(segments) if tr), default=-1)  # (renderers: one trained segment a turn)
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
