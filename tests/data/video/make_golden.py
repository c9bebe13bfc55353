"""Records what transformers' own Qwen video processors make of this folder's videos (golden.json), for
tests/test_multimodal_video.py. Needs torchvision (the processors' backend) and av; run once, commit the output:

    python tests/data/video/make_golden.py

Cases: the three PNG frames as a frame list taken at 2 fps (no sampling), and square.mp4 (30 frames, 10 fps)
decoded with PyAV and sampled at 2 fps; for Qwen2.5-VL (its preprocessor_config.json, which transformers also
reads as the video processor's when a model has no video_preprocessor_config.json) and Qwen3-VL (its
video_preprocessor_config.json). The prompt is a user turn with text before and after the video.
"""
import json
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer
from transformers.models.qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil, Qwen2VLVideoProcessor
from transformers.models.qwen3_vl import Qwen3VLProcessor, Qwen3VLVideoProcessor
from transformers.video_utils import VideoMetadata

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
QWEN25 = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
          "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}
QWEN3_VIDEO = {"size": {"longest_edge": 25165824, "shortest_edge": 4096}, "patch_size": 16, "temporal_patch_size": 2,
               "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
PROMPT = ("<|im_start|>user\nWatch: <|vision_start|><|video_pad|><|vision_end|>What moves?<|im_end|>\n"
          "<|im_start|>assistant\n")
SAMPLE = [0, 1, 7, 100, 1000, -1]  # pixel_values_videos entries recorded (flat indices)


def frames_case():
    frames = [np.asarray(Image.open(HERE / f"frame{k}.png").convert("RGB")) for k in range(3)]
    video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    meta = VideoMetadata(total_num_frames=3, fps=2.0, width=100, height=70, frames_indices=np.arange(3))
    return video, meta, False


def file_case():
    with av.open(str(HERE / "square.mp4")) as c:
        stream = c.streams.video[0]
        fps = float(stream.average_rate)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
    video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    meta = VideoMetadata(total_num_frames=len(frames), fps=fps, width=64, height=48)
    return video, meta, True


def main() -> None:
    tok = AutoTokenizer.from_pretrained(ROOT / "swiftlike/assets/tokenizers/qwen3")
    image = Qwen2VLImageProcessorPil(**QWEN25)
    processors = {
        "qwen2_5_vl": Qwen2_5_VLProcessor(image, tok, Qwen2VLVideoProcessor(**QWEN25, fps=2)),
        "qwen3_vl": Qwen3VLProcessor(image, tok, Qwen3VLVideoProcessor(**QWEN3_VIDEO, fps=2)),
    }
    out = {}
    for model, processor in processors.items():
        for case, make in (("frames", frames_case), ("file", file_case)):
            video, meta, sample = make()
            got = processor(text=[PROMPT], videos=[video], video_metadata=[meta], do_sample_frames=sample,
                            cap_pixels_per_frame=False, return_tensors="pt")
            pixels = got["pixel_values_videos"].flatten()
            out[f"{model}/{case}"] = {
                "input_ids": got["input_ids"][0].tolist(),
                "video_grid_thw": got["video_grid_thw"].tolist(),
                "second_per_grid_ts": [float(x) for x in got.get("second_per_grid_ts", [])],
                "pixels_shape": list(got["pixel_values_videos"].shape),
                "pixels_sum": float(pixels.double().sum()), "pixels_abs_sum": float(pixels.double().abs().sum()),
                "pixels_sample": [float(pixels[i]) for i in SAMPLE],
            }
    (HERE / "golden.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
