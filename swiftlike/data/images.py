"""Images of vision-language rows: where they are, how many tokens each becomes, and their pixels.

A row's images are sources (a path relative to its data file, an http(s) URL, a data: URI). When a row is encoded
the template writes one image-pad token per image; `expand` opens each image (its header: the size is all that
matters), asks the model's image processor how large it will be resized (transformers' `smart_resize` within the
pixel bounds) and repeats the pad token grid_t * grid_h * grid_w / merge_size^2 times, as the official processors do.
Image spans are never trained. The pixels themselves are produced when a batch is drawn (`ImageProcessing.batch`),
so the encoded data holds no image tensors.
"""
from __future__ import annotations

import base64
import functools
import io
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..templates import IGNORE_INDEX
from .fetch import download

PREPROCESSOR_CONFIG = "preprocessor_config.json"
IMAGE_INPUTS = ("pixel_values", "image_grid_thw", "mm_token_type_ids")  # what a vision-language batch adds
_REMOTE = ("http://", "https://")


class ImageError(ValueError):
    """An image that cannot be used (the data layer adds file and row)."""


def is_file(src: str) -> bool:
    """Whether a source names a file (not a URL or a data URI)."""
    return not (src.startswith(_REMOTE) or src.startswith("data:"))


def resolve_source(src: str, base: Path | None) -> str:
    """A path relative to the data file's folder made absolute (a file:// URI is its path); URLs, data URIs and
    absolute paths as given."""
    if src.startswith("file://"):  # (the form qwen-vl-utils' examples write)
        from urllib.parse import unquote, urlparse

        src = unquote(urlparse(src).path)
    if src.startswith(_REMOTE) or src.startswith("data:") or base is None or Path(src).is_absolute():
        return src
    return str(base / src)


def open_image(src: str):
    """The image at a source, as RGB; ImageError naming the source when it cannot be read."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        if src.startswith("data:"):
            head, _, payload = src.partition(",")
            if ";base64" not in head:
                raise ImageError(f"image {src[:40]}...: only base64 data URIs are read")
            data = io.BytesIO(base64.b64decode("".join(payload.split()), validate=True))  # (line-wrapped too)
        elif src.startswith(_REMOTE):
            data = io.BytesIO(download(src))
        else:
            if not Path(src).is_file():
                raise ImageError(f"image {src}: no such file")
            data = src
        image = Image.open(data)
        image.load()
        return ImageOps.exif_transpose(image).convert("RGB")  # upright, as transformers' load_image reads it
    except ImageError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        shown = src if not src.startswith("data:") else src[:40] + "..."
        raise ImageError(f"image {shown}: cannot be read ({str(e).splitlines()[0]})") from None


@dataclass
class ImageProcessing:
    """A Qwen-VL image processor (its preprocessor_config.json) with the run's pixel bounds, and its video
    processor (`video`: video_preprocessor_config.json, else the image config, as transformers falls back)."""

    config: dict
    min_pixels: int | None = None
    max_pixels: int | None = None
    video_config: dict | None = None
    video_fps: float | None = None
    video_max_pixels: int | None = None

    @classmethod
    def from_dir(cls, path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None, **video):
        from .videos import VIDEO_PREPROCESSOR_CONFIG

        file, video_file = Path(path) / PREPROCESSOR_CONFIG, Path(path) / VIDEO_PREPROCESSOR_CONFIG
        if not file.is_file():
            raise UserError(f"{path}: no {PREPROCESSOR_CONFIG}, which a vision-language model needs for its images")
        video_config = json.loads(video_file.read_text(encoding="utf-8")) if video_file.is_file() else None
        return cls(json.loads(file.read_text(encoding="utf-8")), min_pixels, max_pixels, video_config, **video)

    @functools.cached_property
    def video(self):
        """The video processor (data/videos.py) with the run's --video_fps / --video_max_pixels."""
        from .videos import VideoProcessing

        return VideoProcessing(dict(self.video_config or self.config), self.video_fps, self.video_max_pixels)

    def saved_files(self) -> dict[str, str]:
        """The processor files a checkpoint or export carries (with the run's bounds), name -> text."""
        from .videos import VIDEO_PREPROCESSOR_CONFIG

        return {PREPROCESSOR_CONFIG: json.dumps(self.saved_config(), indent=2) + "\n",
                VIDEO_PREPROCESSOR_CONFIG: json.dumps(self.video.saved_config(), indent=2) + "\n"}

    @property
    def bounds(self) -> tuple[int, int]:
        """(min, max) pixels of a resized image: the run's, else the model's (Qwen2.5-VL spells them min_pixels /
        max_pixels, Qwen3-VL size.shortest_edge / size.longest_edge, both counting pixels)."""
        size = self.config.get("size") or {}
        low = self.min_pixels or self.config.get("min_pixels") or size.get("shortest_edge") or 56 * 56
        high = self.max_pixels or self.config.get("max_pixels") or size.get("longest_edge") or 28 * 28 * 1280
        if low > high:  # a run's bound below the model's other one moves it too: the run's bound holds
            low, high = (high, high) if self.max_pixels else (low, low)
        return int(low), int(high)

    @property
    def patch(self) -> int:
        return int(self.config.get("patch_size", 14))

    @property
    def merge(self) -> int:
        return int(self.config.get("merge_size", 2))

    def saved_config(self) -> dict:
        """The config with the run's bounds, as exports and checkpoints write it."""
        low, high = self.bounds
        out = {k: v for k, v in self.config.items() if k not in ("min_pixels", "max_pixels")}
        out["size"] = {"shortest_edge": low, "longest_edge": high}
        return out

    def grid(self, width: int, height: int, src: str = "") -> tuple[int, int, int]:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize  # (no torchvision)

        low, high = self.bounds
        try:
            h, w = smart_resize(height, width, factor=self.patch * self.merge, min_pixels=low, max_pixels=high)
        except ValueError as e:
            raise ImageError(f"image {src} ({width}x{height}): {e}") from None
        return 1, h // self.patch, w // self.patch

    def tokens(self, grid) -> int:
        return grid[0] * grid[1] * grid[2] // (self.merge * self.merge)

    @functools.cached_property
    def processor(self):
        from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

        kwargs = {k: v for k, v in self.saved_config().items() if k not in ("processor_class", "image_processor_type")}
        return Qwen2VLImageProcessorPil(**kwargs)

    def batch(self, sources: list[str]) -> dict:
        """pixel_values and image_grid_thw of a batch's images, in order."""
        return self.batch_of([open_image(s) for s in sources])

    def batch_of(self, images: list) -> dict:
        out = self.processor(images=images, return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}


def cat_images(images: list[dict]) -> dict:
    """Several sequences' pixels (images' and videos') as one batch's, in order (the order the model meets their
    tokens in)."""
    import torch

    keys = dict.fromkeys(k for i in images for k in i)
    return {key: torch.cat([i[key] for i in images if key in i]) for key in keys}


def image_size(src: str) -> tuple[int, int]:
    """(width, height) of an image, reading no more than its header where it can."""
    from PIL import Image

    if src.startswith(("data:",) + _REMOTE):
        return open_image(src).size
    if not Path(src).is_file():
        raise ImageError(f"image {src}: no such file")
    try:
        with Image.open(src) as image:
            return _upright_size(image)
    except (OSError, Image.DecompressionBombError) as e:
        raise ImageError(f"image {src}: cannot be read ({str(e).splitlines()[0]})") from None


def _upright_size(image) -> tuple[int, int]:
    """(width, height) once the EXIF orientation is applied (5-8 turn the image a quarter: a phone's portrait
    photo is stored landscape), from the header alone."""
    width, height = image.size
    return (height, width) if image.getexif().get(0x0112) in (5, 6, 7, 8) else (width, height)


def expand(encoded: dict, images: list[str], processing: ImageProcessing, pad_id: int,
           span: tuple[int, int]) -> dict:
    """The encoded row with each image-pad token repeated to its image's token count, every image span
    (vision start .. vision end) untrained, and the row's images and grids recorded."""
    ids, labels = encoded["input_ids"], encoded["labels"]
    grids = [processing.grid(*image_size(src), src=src) for src in images]
    out_ids, out_labels, k = [], [], 0
    for token, label in zip(ids, labels):
        if token == pad_id:
            n = processing.tokens(grids[k])
            out_ids += [pad_id] * n
            out_labels += [IGNORE_INDEX] * n
            k += 1
        else:
            out_ids.append(token)
            out_labels.append(IGNORE_INDEX if token in span else label)
    if k != len(images):
        raise ImageError(f"{k} image token(s) in the encoded text but {len(images)} image(s)")
    return {**encoded, "input_ids": out_ids, "labels": out_labels, "length": len(out_ids), "images": list(images),
            "image_grid": [list(g) for g in grids]}
