"""Prompts with images and videos for vision-language models.

A prompt's images are its messages' image parts (or a row's `images` list for `<image>` placeholders, the
ms-swift / LLaMA-Factory form), its videos likewise (video parts, or a `videos` list for `<video>`). Its ids are the
template's text with every image's pad token repeated to that image's token count and every video written as its
frames' tokens (Qwen3-VL: with their timestamps) — the expansion training uses (data/images.py, data/videos.py), so
a prompt is encoded exactly as the model was trained — and the pixels are what the model's vision tower reads,
produced when the prompt is submitted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..data.dataset import with_video_texts
from ..data.images import ImageError, expand, is_file, resolve_source
from ..data.videos import resolve_video
from ..errors import UserError
from ..templates import IGNORE_INDEX
from ..templates.errors import TemplateError
from ..templates.messages import normalize_messages


@dataclass
class Media:
    """A prompt's image sources and videos (files or frame lists), in the order the model reads them."""

    images: list = field(default_factory=list)
    videos: list = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.images or self.videos)


def encode_prompt(template, messages: Sequence[dict], tools: list | None = None, images: Sequence[str] | None = None,
                  base: Path | None = None, files: bool = True, videos: Sequence | None = None,
                  **opts) -> tuple[list[int], Media]:
    """(ids ending in the generation prompt, the prompt's images and videos). `images` / `videos`: a row's lists
    for `<image>` / `<video>` placeholders; `base`: the folder relative paths are read from (a data file's);
    `files=False` refuses file paths (a server's clients send data URIs or URLs, never read its files; the URLs
    it fetches: data/fetch.public_only)."""
    messages = normalize_messages(messages)
    media, given = {}, {"images": images, "videos": videos}
    for key, resolve in (("images", resolve_source), ("videos", resolve_video)):
        parts = [s for m in messages for s in m.get(key, ())]
        if parts and given[key]:
            raise TemplateError(f"{key} both as content parts and as a list; give them one way")
        sources = parts or list(given[key] or ())
        if not files and (local := next((s for s in sources for f in _files(s) if is_file(f)), None)) is not None:
            raise UserError(f"{key[:-1]} {str(local)[:80]}: a file path; send {key} as data: URIs (base64) or "
                            "http(s) URLs")
        media[key] = [resolve(s, base) for s in sources]
        if parts:
            messages = [{**m, key: [resolve(s, base) for s in m[key]]} if m.get(key) else m for m in messages]
        elif sources:
            opts[key] = media[key]
    processing = getattr(template, "image_processing", None)
    try:
        if media["videos"] and template.vision is not None:  # (a text-only template refuses them itself)
            opts["video_texts"] = with_video_texts(template, {"videos": media["videos"]})["video_texts"]
        ids = template.encode_prompt(messages, tools, **opts)
        if media["images"]:
            if processing is None:
                raise UserError(f"template {template.name} has no image processor for the prompt's images")
            pad_id, span = template.image_token_ids
            ids = expand({"input_ids": ids, "labels": [IGNORE_INDEX] * len(ids)}, media["images"], processing, pad_id,
                         span)["input_ids"]
    except ImageError as e:
        raise UserError(str(e)) from None
    return ids, Media(media["images"], media["videos"])


def _files(source) -> list:
    """The file-like sources of an image or video: itself, or a frame list's frames."""
    return list(source) if isinstance(source, list) else [source]


def pixels(template, media: Media) -> dict | None:
    """pixel_values and image_grid_thw of a prompt's images, pixel_values_videos and video_grid_thw (and
    Qwen2.5-VL's second_per_grid_ts) of its videos; None without either."""
    if not media:
        return None
    out = {}
    try:
        if media.images:
            out.update(template.image_processing.batch(list(media.images)))
        if media.videos:
            out.update(template.image_processing.video.batch(list(media.videos)))
    except ImageError as e:
        raise UserError(str(e)) from None
    return out
