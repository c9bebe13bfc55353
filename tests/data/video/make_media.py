"""Writes the test videos in this folder (run once; the files are committed): three PNG frames of a moving
square and a 30-frame, 10 fps MPEG-4 clip of a moving square, generated here (no third-party footage)."""
from pathlib import Path

import av
import numpy as np
from PIL import Image

HERE = Path(__file__).parent


def frame(k: int, width: int, height: int) -> np.ndarray:
    """A smooth colour gradient with a square that moves right by `k` steps."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                    np.full_like(x, (40 * k) % 256)], -1).astype(np.uint8)
    side = min(width, height) // 3
    left = (k * width // 12) % max(width - side, 1)
    img[height // 3:height // 3 + side, left:left + side] = (250, 250, 250)
    return img


def main() -> None:
    for k in range(3):
        Image.fromarray(frame(k, 100, 70)).save(HERE / f"frame{k}.png")
    with av.open(str(HERE / "square.mp4"), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for k in range(30):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame(k, 64, 48), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


if __name__ == "__main__":
    main()
