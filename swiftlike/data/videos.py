"""Videos of vision-language rows: which frames are read, how many tokens they become, and their pixels.

A video is a file (read with PyAV: `pip install av`, or `pip install -e ".[video]"`; a path relative to the data
file, an http(s) URL or a base64 data: URI) or a list of frames (image sources, read like images; no decoder
needed). Frames are chosen as the model's own video processor chooses them (transformers'
`Qwen2VLVideoProcessor` / `Qwen3VLVideoProcessor`, `do_sample_frames=True`): `fps` frames per second of the file,
at least `min_frames`, at most `max_frames`; Qwen2.5-VL keeps a multiple of the temporal patch. A frame list is
taken as already sampled at `fps` frames per second: every frame is kept. Frames are resized together (the
model's `smart_resize` within the video pixel bounds; Qwen3-VL's bound counts all frames' pixels), normalized and
cut into patches of `temporal_patch_size` frames (an odd count repeats the last frame), so a video becomes
grid_t * grid_h * grid_w / merge_size^2 tokens. Qwen3-VL writes each temporal patch's time before it
("<1.4 seconds>", the mean time of its frames); Qwen2.5-VL places the patches in time through M-RoPE
(`second_per_grid_ts`: seconds per temporal patch). tests/test_multimodal_video.py checks all of it against
transformers' processors (recorded in tests/data/video/golden.json).
"""
from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from pathlib import Path

from .fetch import download
from .images import ImageError, image_size, is_file, open_image, resolve_source

VIDEO_PREPROCESSOR_CONFIG = "video_preprocessor_config.json"
_DEFAULT_FPS = 2.0  # the rate Qwen's video processors sample at


def resolve_video(src, base: Path | None):
    """A video source with relative paths made absolute (a frame list: each frame's)."""
    if isinstance(src, list):
        return [resolve_source(s, base) for s in src]
    return resolve_source(src, base)


def video_name(src) -> str:
    """How an error names a video."""
    if isinstance(src, list):
        return f"frames {src[0]} ... ({len(src)})" if src else "an empty frame list"
    return src if not src.startswith("data:") else src[:40] + "..."


def _av():
    try:
        import av
    except ImportError:
        raise ImageError("reading video files needs a decoder: pip install av (or pip install -e \".[video]\"); "
                         "a video given as a list of frame images needs none") from None
    return av


def _handle(src: str):
    """What PyAV opens for a video file source: a path, or the bytes of a URL or data URI."""
    if src.startswith("data:"):
        head, _, payload = src.partition(",")
        if ";base64" not in head:
            raise ImageError(f"video {src[:40]}...: only base64 data URIs are read")
        return io.BytesIO(base64.b64decode("".join(payload.split()), validate=True))
    if not is_file(src):  # (kept: a video is read at encoding, then for its pixels)
        return io.BytesIO(download(src, timeout=60))
    if not Path(src).is_file():
        raise ImageError(f"video {src}: no such file")
    return src


@dataclass(frozen=True)
class Clip:
    """What a video is read as: the frame rate, the total frame count, the frame size and the frames kept."""

    fps: float
    total: int
    width: int
    height: int
    indices: tuple[int, ...]


@dataclass
class VideoProcessing:
    """A Qwen-VL video processor (its video_preprocessor_config.json, else its preprocessor_config.json, as
    transformers reads them) with the run's frame rate and pixel bound."""

    config: dict
    fps: float | None = None
    max_pixels: int | None = None

    @property
    def qwen3(self) -> bool:
        """Qwen3-VL's rules (3-D resize bound, linspace sampling, timestamps) rather than Qwen2/2.5-VL's."""
        names = (self.config.get("video_processor_type", ""), self.config.get("processor_class", ""))
        return any("Qwen3VL" in n for n in names)

    @property
    def rate(self) -> float:
        return float(self.fps or self.config.get("fps") or _DEFAULT_FPS)

    @property
    def bounds(self) -> tuple[int, int]:
        size = self.config.get("size") or {}
        factor = (32 if self.qwen3 else 28) ** 2  # the processors' defaults: 128 to 768 merged patches
        low = size.get("shortest_edge") or self.config.get("min_pixels") or 128 * factor
        high = self.max_pixels or size.get("longest_edge") or self.config.get("max_pixels") or 768 * factor
        return int(min(low, high)), int(high)

    def _int(self, key: str, default: int) -> int:
        return int(self.config.get(key) or default)

    @property
    def patch(self) -> int:
        return self._int("patch_size", 16 if self.qwen3 else 14)

    @property
    def merge(self) -> int:
        return self._int("merge_size", 2)

    @property
    def temporal(self) -> int:
        return self._int("temporal_patch_size", 2)

    def saved_config(self) -> dict:
        """The config with the run's bound and rate, as checkpoints and exports write it."""
        low, high = self.bounds
        out = {k: v for k, v in self.config.items() if k not in ("min_pixels", "max_pixels", "image_processor_type")}
        out.update(size={"shortest_edge": low, "longest_edge": high}, fps=self.rate)
        out.setdefault("video_processor_type", "Qwen3VLVideoProcessor" if self.qwen3 else "Qwen2VLVideoProcessor")
        return out

    # -- which frames -----------------------------------------------------------------------
    def probe(self, src) -> Clip:
        """A video's frame rate, size and the frames the model reads (a file's header and frame count; a frame
        list's first frame, every frame the same size)."""
        if isinstance(src, list):
            if not src:
                raise ImageError("a video with no frames")
            sizes = {image_size(s) for s in src}
            if len(sizes) > 1:
                raise ImageError(f"video {video_name(src)}: frames of different sizes {sorted(sizes)}")
            (width, height), = sizes
            return Clip(self.rate, len(src), width, height, tuple(range(len(src))))
        av = _av()
        try:
            with av.open(_handle(src)) as container:
                stream = container.streams.video[0]
                fps = float(stream.average_rate or stream.guessed_rate or 0)
                total = stream.frames or sum(1 for _ in container.decode(stream))
                width, height = stream.codec_context.width, stream.codec_context.height
        except ImageError:
            raise
        except (av.FFmpegError, IndexError, OSError, ValueError) as e:
            raise ImageError(f"video {video_name(src)}: cannot be read ({str(e).splitlines()[0]})") from None
        if not fps or not total:
            raise ImageError(f"video {video_name(src)}: no frame rate or no frames")
        return Clip(fps, total, width, height, self._sample(total, fps, src))

    def _sample(self, total: int, fps: float, src) -> tuple[int, ...]:
        """The frames a model's processor keeps of `total` frames at `fps` when it samples `self.rate` per second."""
        low, high = self._int("min_frames", 4), self._int("max_frames", 768)
        if self.qwen3:
            n = min(max(int(total / fps * self.rate), low), high, total)
            step = (total - 1) / (n - 1) if n > 1 else 0.0
            return tuple(int(round(i * step)) for i in range(n))  # numpy linspace(0, total-1, n).round()
        t = self.temporal
        n = min(max(total / fps * self.rate, low), math.floor(min(high, total) / t) * t, total)
        n = math.floor(n / t) * t
        if n <= 0:
            raise ImageError(f"video {video_name(src)}: {total} frame(s), fewer than one temporal patch ({t})")
        import torch

        return tuple(torch.arange(0, total, total / n).int().tolist())  # as Qwen2VLVideoProcessor samples

    # -- how many tokens --------------------------------------------------------------------
    def resized(self, clip: Clip, src="") -> tuple[int, int]:
        """(height, width) every frame is resized to."""
        low, high = self.bounds
        factor = self.patch * self.merge
        if self.qwen3 and len(clip.indices) < self.temporal:
            raise ImageError(f"video {video_name(src)}: {len(clip.indices)} frame(s); Qwen3-VL reads at least "
                             f"{self.temporal} (one temporal patch)")
        try:
            if self.qwen3:
                from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

                return smart_resize(len(clip.indices), clip.height, clip.width, temporal_factor=self.temporal,
                                    factor=factor, min_pixels=low, max_pixels=high)
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

            return smart_resize(clip.height, clip.width, factor=factor, min_pixels=low, max_pixels=high)
        except ValueError as e:
            raise ImageError(f"video {video_name(src)} ({clip.width}x{clip.height}, {len(clip.indices)} frames): "
                             f"{e}") from None

    def grid(self, clip: Clip, src="") -> tuple[int, int, int]:
        height, width = self.resized(clip, src)
        return -(-len(clip.indices) // self.temporal), height // self.patch, width // self.patch

    def tokens(self, grid) -> int:
        return grid[0] * grid[1] * grid[2] // (self.merge * self.merge)

    def timestamps(self, clip: Clip) -> list[float]:
        """Seconds of each temporal patch: the mean time of its first and last frame (the last frame repeated
        to fill a patch), as Qwen3-VL's processor writes them."""
        t = self.temporal
        times = [i / clip.fps for i in clip.indices]
        times += [times[-1]] * (-len(times) % t)
        return [(times[i] + times[i + t - 1]) / 2 for i in range(0, len(times), t)]

    def seconds_per_patch(self, clip: Clip) -> float:
        """Seconds a temporal patch spans (Qwen2.5-VL's second_per_grid_ts): the patch size over the sampled rate."""
        return self.temporal / (len(clip.indices) / clip.total * clip.fps)

    # -- pixels -----------------------------------------------------------------------------
    def frames(self, src, clip: Clip) -> list:
        """The kept frames as RGB images."""
        if isinstance(src, list):
            return [open_image(s) for s in src]
        av, wanted, out = _av(), set(clip.indices), {}
        try:
            with av.open(_handle(src)) as container:
                for k, frame in enumerate(container.decode(video=0)):
                    if k in wanted:
                        out[k] = frame.to_image().convert("RGB")
                    if k >= clip.indices[-1]:
                        break
        except (av.FFmpegError, OSError, ValueError) as e:
            raise ImageError(f"video {video_name(src)}: cannot be read ({str(e).splitlines()[0]})") from None
        if len(out) < len(wanted):
            raise ImageError(f"video {video_name(src)}: {len(out)} of its {clip.total} frames could be decoded")
        return [out[k] for k in clip.indices]

    def pixels(self, src) -> dict:
        """pixel_values_videos, video_grid_thw (and for Qwen2.5-VL second_per_grid_ts) of one video."""
        import numpy as np
        import torch
        from PIL import Image

        clip = self.probe(src)
        height, width = self.resized(clip, video_name(src))
        frames = [f if f.size == (width, height) else f.resize((width, height), Image.BICUBIC)
                  for f in self.frames(src, clip)]
        video = torch.from_numpy(np.stack([np.asarray(f, dtype=np.float32) for f in frames])).permute(0, 3, 1, 2)
        mean = torch.tensor(self.config.get("image_mean", [0.5] * 3)).view(1, 3, 1, 1)
        std = torch.tensor(self.config.get("image_std", [0.5] * 3)).view(1, 3, 1, 1)
        video = (video * float(self.config.get("rescale_factor", 1 / 255)) - mean) / std
        out = {"pixel_values_videos": self._patches(video),
               "video_grid_thw": torch.tensor([self.grid(clip)])}
        if not self.qwen3:
            out["second_per_grid_ts"] = torch.tensor([self.seconds_per_patch(clip)])
        return out

    def _patches(self, video):
        """(frames, C, H, W) -> (grid_t * grid_h * grid_w, C * temporal * patch * patch), in the order the vision
        tower reads them: temporal patch, then merge blocks row by row, then the patches inside a block."""
        import torch

        t, p, m = self.temporal, self.patch, self.merge
        if pad := -video.shape[0] % t:
            video = torch.cat([video, video[-1:].expand(pad, -1, -1, -1)])
        frames, channels, height, width = video.shape
        gt, gh, gw = frames // t, height // p, width // p
        x = video.reshape(gt, t, channels, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return x.reshape(gt * gh * gw, channels * t * p * p).contiguous()

    def batch(self, sources: list) -> dict:
        """The pixels of a batch's videos, in order."""
        import torch

        parts = [self.pixels(s) for s in sources]
        return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
