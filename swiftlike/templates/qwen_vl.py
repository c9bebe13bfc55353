"""Qwen vision-language templates: Qwen2-VL / Qwen2.5-VL (one shared template) and Qwen3-VL Instruct / Thinking.

Official references (tests/data/chat_templates, provenance in NOTICE): the processors' chat_template.json of
Qwen2-VL-2B/7B and Qwen2.5-VL-3B/7B (byte-identical), Qwen3-VL-4B-Instruct, Qwen3-VL-Thinking. An image stands in a
message's text as the IMAGE marker, a video as the VIDEO marker (templates/messages.py); the `vision` option says
what the official template writes for each. Parity is proven in tests/test_template_parity_vl.py.

Qwen2-VL renders every message alike (`<|im_start|>role\\ncontent<|im_end|>\\n`), injects "You are a helpful
assistant." when the first message is not a system one and has no tool support (its official template silently
drops tools and tool calls; here they are refused). Qwen3-VL-Instruct is Qwen3's ChatML with tools but without
think handling; Qwen3-VL-Thinking is Qwen3's reasoning ChatML with a generation prompt that opens <think>.
"""
from __future__ import annotations

from .base import Segments, TemplateSpec
from .chatml import render_chatml
from .errors import TemplateError

_STOP = ("<|im_end|>", "<|endoftext|>")
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def render_qwen2_vl(spec: TemplateSpec, messages: list[dict], tools: list | None, add_generation_prompt: bool,
                    **_) -> Segments:
    if tools or any(m.get("tool_calls") for m in messages):
        raise TemplateError(f"template {spec.name} has no tool support (the official template drops tools and tool "
                            "calls without a word); use a Qwen3-VL model for tool use")
    segs: Segments = []
    if not messages or messages[0]["role"] != "system":
        segs.append(("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n", False))
    for m in messages:
        trained = m.get("loss")
        if m["role"] == "assistant":
            segs += [("<|im_start|>assistant\n", False), (m["content"] + "<|im_end|>", trained is not False),
                     ("\n", False)]
        else:
            segs.append((f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n", bool(trained)))
    if add_generation_prompt:
        segs.append(("<|im_start|>assistant\n", False))
    return segs


QWEN_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
# what the official templates write for an image and a video; a video's expansion (data/videos.py) is text:
# Qwen2.5-VL one span of pads, Qwen3-VL one "<t seconds>" span per temporal patch (`video_timestamps`)
_VISION = {"image": QWEN_IMAGE, "image_pad": "<|image_pad|>", "span": ("<|vision_start|>", "<|vision_end|>"),
           "video": QWEN_VIDEO, "video_pad": "<|video_pad|>"}
_VISION3 = {**_VISION, "video_timestamps": True}

QWEN2_VL = TemplateSpec(
    "qwen2_vl", render_qwen2_vl, _STOP, {"vision": _VISION},
    "Qwen2-VL and Qwen2.5-VL Instruct: ChatML, default system prompt, images; no tools")
QWEN3_VL = TemplateSpec(
    "qwen3_vl", render_chatml, _STOP,
    {"vision": _VISION3, "tool_format": "hermes", "plain_assistant": True, "drop_later_system": True},
    "Qwen3-VL Instruct: ChatML with tools and images, no think handling")
QWEN3_VL_THINKING = TemplateSpec(
    "qwen3_vl_thinking", render_chatml, _STOP,
    {"vision": _VISION3, "tool_format": "hermes", "generation_suffix": "<think>\n"},
    "Qwen3-VL Thinking: reasoning ChatML with images (the generation prompt opens <think>)")

SPECS = [QWEN2_VL, QWEN3_VL, QWEN3_VL_THINKING]
