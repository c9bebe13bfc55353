"""GRPO on image prompts with Qwen2.5-VL and Qwen3-VL miniatures: the policy's own rollout (image and text
prompts in one left-padded batch, M-RoPE positions from the images' grids) decodes what transformers' `generate`
decodes for each prompt alone; the completion log-probs of right-padded rows with images equal the model's on
each row alone; `wb grpo` trains on image prompts and hands reward functions the images' paths
(docs/multimodal.md)."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import swiftlike as wb
from swiftlike.data.images import ImageProcessing
from swiftlike.infer import vision
from swiftlike.models.loader import build_miniature
from swiftlike.registry import find_model
from swiftlike.rollout import Sampling
from swiftlike.rollout.hf import HFRollout
from swiftlike.templates import get_template
from swiftlike.train.grpo import GRPOObjective
from swiftlike.train.grpo_trainer import collate_completions

MODELS = ["Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen3-VL-4B-Instruct"]


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo-pictures")
    for name, size, rgb in (("red", (64, 64), (220, 30, 30)), ("blue", (96, 64), (30, 40, 220))):
        Image.new("RGB", size, rgb).save(root / f"{name}.png")
    return root


def _setup(model, tokenizer, root):
    template = get_template(find_model(model).template, tokenizer)
    template.image_processing = ImageProcessing(dict(find_model(model).processor))
    convs = [[{"role": "user", "content": [{"type": "image", "image": str(root / "red.png")}, "Colour?"]}],
             [{"role": "user", "content": "A text prompt, somewhat longer than the others."}],
             [{"role": "user", "content": [{"type": "image", "image": str(root / "blue.png")}, "and",
                                           {"type": "image", "image": str(root / "red.png")}]}]]
    encoded = [vision.encode_prompt(template, c) for c in convs]
    return template, [ids for ids, _ in encoded], [vision.pixels(template, s) for _, s in encoded]


@pytest.mark.parametrize("model", MODELS)
def test_rollout_with_images_decodes_as_generate_does_alone(model, pictures, qwen3_tokenizer):
    template, prompts, pixels = _setup(model, qwen3_tokenizer, pictures)
    net = build_miniature(model).eval()
    sampling = Sampling(max_tokens=5, temperature=0.0, stop_token_ids=tuple(template.stop_token_ids))
    ours = HFRollout(net, qwen3_tokenizer.pad_token_id).generate(prompts, 2, sampling, images=pixels)
    pad = template.image_token_ids[0]
    for k, (ids, px) in enumerate(zip(prompts, pixels)):
        x = torch.tensor([ids])
        with torch.no_grad():
            ref = net.generate(input_ids=x, attention_mask=torch.ones_like(x), mm_token_type_ids=(x == pad).int(),
                               max_new_tokens=5, do_sample=False, **(px or {}))[0, len(ids):].tolist()
        assert ours[2 * k] == ours[2 * k + 1] == ref[:len(ours[2 * k])], k


@pytest.mark.parametrize("model", MODELS)
def test_completion_logps_with_images_equal_each_row_alone(model, pictures, qwen3_tokenizer):
    template, prompts, pixels = _setup(model, qwen3_tokenizer, pictures)
    net = build_miniature(model).eval()
    completions = [[1000, 2000, 3000], [4000, 5000], [6000, 7000, 8000, 9000]]
    samples = [{"prompt_ids": p, "completion_ids": c, "advantage": 1.0, "masked": False, "pixels": px}
               for p, c, px in zip(prompts, completions, pixels)]
    pad = template.image_token_ids[0]
    batch = collate_completions(samples, qwen3_tokenizer.pad_token_id, pad)
    assert batch["pixel_values"].shape[0] == sum(int(px["image_grid_thw"].prod(-1).sum()) for px in pixels if px)
    objective = GRPOObjective(net)
    with torch.no_grad():
        flat = objective.token_logps(objective.policy, **{k: v for k, v in batch.items()
                                                          if k not in ("completion_lens", "advantages")})
        own = []
        for p, c, px in zip(prompts, completions, pixels):
            x = torch.tensor([p + c])
            logits = net(input_ids=x, mm_token_type_ids=(x == pad).int(), **(px or {})).logits[0].float()
            own.append(logits[len(p) - 1:-1].log_softmax(-1).gather(-1, torch.tensor(c)[:, None])[:, 0])
    assert torch.allclose(flat, torch.cat(own), atol=1e-4)


@pytest.mark.slow
def test_wb_grpo_on_image_prompts_gives_rewards_the_images(tmp_path, pictures):
    data = tmp_path / "prompts.jsonl"
    for name in ("red", "blue"):
        (tmp_path / f"{name}.png").write_bytes((pictures / f"{name}.png").read_bytes())
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"messages": [{"role": "user", "content": [{"type": "image", "image": "red.png"}, "Colour?"]}],
         "solution": "red"},
        {"prompt": "<image>Colour?", "images": ["blue.png"], "solution": "blue"},
        {"prompt": "Name a colour.", "solution": "green"}]))
    seen = []

    def names_the_colour(completions, images, solution, **_):
        seen.extend(zip([tuple(i or ()) for i in images], solution))
        return [float(s in c) for c, s in zip(completions, solution)]

    r = wb.grpo(model=MODELS[1], miniature=True, dataset=[str(data)], reward_funcs=[names_the_colour],
                num_generations=2, per_device_train_batch_size=3, gradient_accumulation_steps=2,
                max_completion_length=4, beta=0.04, learning_rate=1e-3, max_steps=2, output_dir=str(tmp_path / "run"))
    by_solution = dict((s, i) for i, s in seen)
    assert by_solution == {"red": (str(tmp_path / "red.png"),), "blue": (str(tmp_path / "blue.png"),), "green": ()}
    steps = [h for h in r.log_history if "kl" in h]
    assert len(steps) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in steps)
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as its reference, images included
    assert (Path(r.checkpoint) / "preprocessor_config.json").is_file()


def test_mixed_image_and_text_prompts_are_refused_where_ranks_must_agree(monkeypatch):
    from types import SimpleNamespace

    from swiftlike.errors import UserError
    from swiftlike.pipelines.grpo import _check_mixed_images

    prompts = [{"images": ["a.png"]}, {}]
    cfg = SimpleNamespace(fsdp="full_shard", deepspeed=None, freeze_vit=True, freeze_aligner=True)
    _check_mixed_images(cfg, prompts)  # one process: nothing to agree on
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="1 of 2 prompts have images: with several processes under ZeRO-3"):
        _check_mixed_images(cfg, prompts)
    _check_mixed_images(cfg, prompts[:1])  # images everywhere: every rank runs the vision tower
    _check_mixed_images(SimpleNamespace(fsdp=None, deepspeed=None, freeze_vit=True, freeze_aligner=True), prompts)
