"""Qwen vision-language models: Qwen2.5-VL and Qwen3-VL (Instruct, Thinking).

Config and image-processor facts from the models' config.json / preprocessor_config.json (provenance in NOTICE and
the multimodal reference digest): text model, vision tower, M-RoPE sections and the processor's patch, merge and
pixel bounds. Qwen2-VL ids share Qwen2.5-VL's template (`qwen2_vl`, use --template with a local Qwen2-VL model).
"""
from .core import ModelMeta, register

_IDS = {"vision_start_token_id": 151652, "vision_end_token_id": 151653, "image_token_id": 151655,
        "video_token_id": 151656}
_QWEN25_PROCESSOR = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
                     "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                     "image_std": [0.26862954, 0.26130258, 0.27577711], "image_processor_type": "Qwen2VLImageProcessor",
                     "processor_class": "Qwen2_5_VLProcessor"}
_QWEN3_PROCESSOR = {"size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16,
                    "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5],
                    "image_std": [0.5, 0.5, 0.5], "image_processor_type": "Qwen2VLImageProcessorFast",
                    "processor_class": "Qwen3VLProcessor"}

# Qwen3-VL-4B's video_preprocessor_config.json (Qwen2.5-VL has none: transformers reads its preprocessor_config)
_QWEN3_VIDEO = {"size": {"longest_edge": 25165824, "shortest_edge": 4096}, "patch_size": 16, "temporal_patch_size": 2,
                "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                "processor_class": "Qwen3VLProcessor", "video_processor_type": "Qwen3VLVideoProcessor"}

# name: (hidden, intermediate, layers, heads, kv_heads, vocab, tie)
_QWEN25 = {"Qwen2.5-VL-3B-Instruct": (2048, 11008, 36, 16, 2, 151936, True),
           "Qwen2.5-VL-7B-Instruct": (3584, 18944, 28, 28, 4, 152064, False)}
# name: (hidden, intermediate, layers, vision (depth, hidden, intermediate), deepstack, tie)
_QWEN3 = {"Qwen3-VL-4B": (2560, 9728, 36, (24, 1024, 4096), [5, 11, 17], True),
          "Qwen3-VL-8B": (4096, 12288, 36, (27, 1152, 4304), [8, 16, 24], False)}


def _qwen25(h, inter, layers, heads, kv, vocab, tie) -> dict:
    return dict(_IDS, model_type="qwen2_5_vl", architectures=["Qwen2_5_VLForConditionalGeneration"],
                hidden_size=h, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=tie, hidden_act="silu",
                rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=128000, bos_token_id=151643,
                eos_token_id=151645, vision_token_id=151654, torch_dtype="bfloat16",
                rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
                vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_chans=3,
                                   out_hidden_size=h, patch_size=14, spatial_merge_size=2, spatial_patch_size=14,
                                   window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2,
                                   temporal_patch_size=2, hidden_act="silu"))


def _qwen3(h, inter, layers, vision, deepstack, tie) -> dict:
    depth, vh, vinter = vision
    return dict(_IDS, model_type="qwen3_vl", architectures=["Qwen3VLForConditionalGeneration"],
                tie_word_embeddings=tie,
                text_config=dict(model_type="qwen3_vl_text", hidden_size=h, intermediate_size=inter,
                                 num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=8,
                                 head_dim=128, vocab_size=151936, hidden_act="silu", rms_norm_eps=1e-6,
                                 rope_theta=5000000, max_position_embeddings=262144, bos_token_id=151643,
                                 eos_token_id=151645, attention_bias=False, tie_word_embeddings=tie, dtype="bfloat16",
                                 rope_scaling={"mrope_interleaved": True, "mrope_section": [24, 20, 20],
                                               "rope_type": "default"}),
                vision_config=dict(depth=depth, hidden_size=vh, intermediate_size=vinter, num_heads=16,
                                   out_hidden_size=h, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                                   hidden_act="gelu_pytorch_tanh", in_channels=3, num_position_embeddings=2304,
                                   deepstack_visual_indexes=deepstack))


def _add(model_id: str, cfg: dict, template: str, processor: dict, video: dict | None = None) -> None:
    register(ModelMeta(model_id=model_id, model_type=cfg["model_type"], architecture=cfg["architectures"][0],
                       template=template, family="qwen_vl", tokenizer="qwen3", config=cfg, processor=processor,
                       video_processor=video or {}, requires=("transformers>=4.57",)))


for _name, _dims in _QWEN25.items():
    _add(f"Qwen/{_name}", _qwen25(*_dims), "qwen2_vl", _QWEN25_PROCESSOR)
for _name, _dims in _QWEN3.items():
    _add(f"Qwen/{_name}-Instruct", _qwen3(*_dims), "qwen3_vl", _QWEN3_PROCESSOR, _QWEN3_VIDEO)
    _add(f"Qwen/{_name}-Thinking", _qwen3(*_dims), "qwen3_vl_thinking", _QWEN3_PROCESSOR, _QWEN3_VIDEO)
