"""Prompts with images for vision-language models.

A prompt's images are its messages' image parts (or a row's `images` list for `<image>` placeholders, the
ms-swift / LLaMA-Factory form). Its ids are the template's text with every image's pad token repeated to that
image's token count — the expansion training uses (data/images.py), so a prompt is encoded exactly as the model
was trained — and the pixels are what the model's vision tower reads, produced when the prompt is submitted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..data.images import ImageError, expand, is_file, resolve_source
from ..errors import UserError
from ..templates import IGNORE_INDEX
from ..templates.errors import TemplateError
from ..templates.messages import normalize_messages


def encode_prompt(template, messages: Sequence[dict], tools: list | None = None, images: Sequence[str] | None = None,
                  base: Path | None = None, files: bool = True, **opts) -> tuple[list[int], list[str]]:
    """(ids ending in the generation prompt, the image sources in the order the model reads them). `images`: a
    row's list for `<image>` placeholders; `base`: the folder relative image paths are read from (a data file's);
    `files=False` refuses file paths (a server's clients send data URIs or URLs, never read its files)."""
    messages = normalize_messages(messages)
    if any(m.get("videos") for m in messages):
        raise UserError("a prompt with a video: videos are read by wb sft only for now (prompts read images)")
    parts = [s for m in messages for s in m.get("images", ())]
    if parts and images:
        raise TemplateError("images both as content parts and as a list; give them one way")
    if not files and (local := next((s for s in parts or images or () if is_file(s)), None)) is not None:
        raise UserError(f"image {local[:80]}: a file path; send images as data: URIs (base64) or http(s) URLs")
    sources = [resolve_source(s, base) for s in (parts or images or ())]
    if parts:
        messages = [{**m, "images": [resolve_source(s, base) for s in m["images"]]} if m.get("images") else m
                    for m in messages]
    ids = template.encode_prompt(messages, tools, images=None if parts else sources, **opts)
    if not sources:
        return ids, []
    processing = getattr(template, "image_processing", None)
    if processing is None:
        raise UserError(f"template {template.name} has no image processor for the prompt's images")
    pad_id, span = template.image_token_ids
    try:
        encoded = expand({"input_ids": ids, "labels": [IGNORE_INDEX] * len(ids)}, sources, processing, pad_id, span)
    except ImageError as e:
        raise UserError(str(e)) from None
    return encoded["input_ids"], sources


def pixels(template, sources: Sequence[str]) -> dict | None:
    """pixel_values and image_grid_thw of a prompt's images (None without images)."""
    if not sources:
        return None
    try:
        return template.image_processing.batch(list(sources))
    except ImageError as e:
        raise UserError(str(e)) from None
