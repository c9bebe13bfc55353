"""Preference training with images on Qwen2.5-VL and Qwen3-VL miniatures: a pair's images belong to the prompt
both sides share; the packed chosen-then-rejected batch scores every completion exactly as the model does on
that sequence alone with its images; text-only batches keep their blank image out of the pairs; `wb dpo` trains
from the CLI on mixed image and text pairs (docs/multimodal.md)."""
import json

import pytest
import torch
from conftest import logged_steps, wb_cli
from PIL import Image

from swiftlike.data.collate import ImageCollate
from swiftlike.data.formats import RowError, to_canonical
from swiftlike.data.images import ImageProcessing
from swiftlike.data.pairs import collate_pairs, encode_pairs, pair_sequences
from swiftlike.models.loader import build_miniature
from swiftlike.registry import find_model
from swiftlike.templates import get_template
from swiftlike.train.dpo import PreferenceObjective

MODELS = ["Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen3-VL-4B-Instruct"]


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo-pictures")
    for name, size, rgb in (("red", (64, 64), (220, 30, 30)), ("blue", (96, 64), (30, 40, 220)),
                            ("green", (64, 128), (30, 200, 40))):
        Image.new("RGB", size, rgb).save(root / f"{name}.png")
    return root


def _pairs_rows(root):
    return [
        {"messages": [{"role": "user", "content": [{"type": "image", "image": str(root / "red.png")},
                                                   {"type": "text", "text": "Colour?"}]}],
         "chosen": {"role": "assistant", "content": "red"}, "rejected": {"role": "assistant", "content": "blue"}},
        {"prompt": "Compare <image> and <image>.", "chosen": "Blue is wider.", "rejected": "They match.",
         "images": [str(root / "blue.png"), str(root / "green.png")]},
        {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
    ]


def test_a_pairs_images_belong_to_the_prompt_both_sides_share(pictures):
    row = to_canonical(_pairs_rows(pictures)[0], "preference")
    assert row["images"] == [str(pictures / "red.png")]
    assert row["messages"][0]["content"] == row["rejected_messages"][0]["content"] == "<image>Colour?"
    different = {"chosen": [{"role": "user", "content": [{"type": "image", "image": "a.png"}, "hi"]},
                            {"role": "assistant", "content": "A"}],
                 "rejected": [{"role": "user", "content": [{"type": "image", "image": "b.png"}, "hi"]},
                              {"role": "assistant", "content": "B"}]}
    with pytest.raises(RowError, match="different images; images belong to the prompt"):
        to_canonical(different, "preference")
    with pytest.raises(RowError, match=r"1 <image> placeholder\(s\) in the messages but 2 image\(s\)"):
        to_canonical({"prompt": "<image>hi", "chosen": "A", "rejected": "B", "images": ["a.png", "b.png"]},
                     "preference")
    kto = to_canonical({"messages": [{"role": "user", "content": [{"type": "image", "image": "a.png"}, "hi"]},
                                     {"role": "assistant", "content": "A"}], "label": True}, "kto")
    assert kto["images"] == ["a.png"] and kto["messages"][0]["content"] == "<image>hi"
    assert to_canonical({"prompt": "<image>hi", "completion": "A", "label": False, "images": ["b.png"]},
                        "kto")["images"] == ["b.png"]


@pytest.mark.parametrize("model", MODELS)
def test_packed_pair_logps_equal_each_sequence_alone(model, pictures, qwen3_tokenizer):
    template = get_template(find_model(model).template, qwen3_tokenizer)
    template.image_processing = ImageProcessing(dict(find_model(model).processor))
    pad, span = template.image_token_ids
    pairs, _ = encode_pairs([to_canonical(r, "preference") for r in _pairs_rows(pictures)], template, 4096)
    collate = ImageCollate(collate_pairs, template.image_processing, pad, span, sequences=pair_sequences)
    net = build_miniature(model).eval()
    objective = PreferenceObjective(net, "sigmoid", 0.1)
    batch = collate(pairs)
    inputs = {k: v for k, v in batch.items() if k not in ("n_pairs",)}
    with torch.no_grad():
        sums, counts, _ = objective._sequence_logps(objective.policy, **inputs)
        for i, seq in enumerate(pair_sequences(pairs)):
            ids = torch.tensor([seq["input_ids"]])
            pixels = template.image_processing.batch(seq["images"]) if seq.get("images") else {}
            logits = net(input_ids=ids, mm_token_type_ids=(ids == pad).int(), **pixels).logits[0, :-1].float()
            labels = torch.tensor(seq["labels"][1:])
            keep = labels != -100
            own = logits.log_softmax(-1)[keep].gather(-1, labels[keep, None]).sum()
            assert float(sums[i]) == pytest.approx(float(own), rel=1e-4, abs=1e-3), i
            assert int(counts[i]) == int(keep.sum())
        # a batch of text-only pairs gets a blank image as a last, unscored sequence: the pairs are unchanged
        text = collate([pairs[2]])
        assert "pixel_values" in text and len(text["seq_lens"]) == 3
        loss, n, metrics = objective(**text)
        assert int(n) == 1 and torch.isfinite(loss)
        alone, _, _ = objective._sequence_logps(objective.policy, **{k: v for k, v in text.items() if k != "n_pairs"})
        assert float(alone[0]) == pytest.approx(float(sums[2]), rel=1e-4, abs=1e-3)


@pytest.mark.parametrize("model", MODELS)
def test_kto_matched_and_mismatched_sequences_keep_their_prompts_images(model, pictures, qwen3_tokenizer):
    """KTO's KL sequences pair prompt i (with its images) with answer i-1: every sequence's log-prob sum equals the
    model's on that sequence alone; a text-only batch carries the blank image as a last sequence."""
    from swiftlike.data.collate import collate_padding_free
    from swiftlike.data.pairs import KTOCollate, encode_kto
    from swiftlike.train.dpo import KTOObjective

    template = get_template(find_model(model).template, qwen3_tokenizer)
    template.image_processing = ImageProcessing(dict(find_model(model).processor))
    pad, span = template.image_token_ids
    rows = [to_canonical(r, "kto") for r in (
        {"prompt": "<image>Colour?", "completion": "red", "label": True, "images": [str(pictures / "red.png")]},
        {"prompt": "Say hi.", "completion": "Hi!", "label": False},
        {"prompt": "<image> and <image>?", "completion": "blue, green", "label": True,
         "images": [str(pictures / "blue.png"), str(pictures / "green.png")]})]
    examples, _ = encode_kto(rows, template, 4096)
    collate = KTOCollate(template, ImageCollate(collate_padding_free, template.image_processing, pad, span))
    batch = collate(examples)
    assert len(batch["seq_lens"]) == 6 and int(batch["image_grid_thw"].shape[0]) == 6  # 3 images, twice
    net = build_miniature(model).eval()
    objective = KTOObjective(net, 0.1)
    inputs = {k: v for k, v in batch.items() if k not in ("n_pairs", "labels")}
    with torch.no_grad():
        sums, _, _ = objective._sequence_logps(objective.policy, **inputs)
        starts = torch.cumsum(batch["seq_lens"], 0) - batch["seq_lens"]
        images = [r.get("images", []) for r in rows] * 2  # matched, then mismatched: prompt i keeps its images
        for i, (start, n) in enumerate(zip(starts.tolist(), batch["seq_lens"].tolist())):
            ids = batch["input_ids"][:, start:start + n]
            pixels = template.image_processing.batch(images[i]) if images[i] else {}
            logits = net(input_ids=ids, mm_token_type_ids=(ids == pad).int(), **pixels).logits[0, :-1].float()
            labels = batch["targets"][0, start:start + n - 1]
            keep = labels != -100
            own = logits.log_softmax(-1)[keep].gather(-1, labels[keep, None]).sum()
            assert float(sums[i]) == pytest.approx(float(own), rel=1e-4, abs=1e-3), i
        text = collate([examples[1], examples[1]])
        assert "pixel_values" in text and len(text["seq_lens"]) == 5  # 2 matched, 2 mismatched, the blank image
        loss, n, metrics = objective(**text)
        assert int(n) == 2 and torch.isfinite(loss)


@pytest.mark.slow
def test_wb_dpo_trains_on_image_and_text_pairs(tmp_path, pictures):
    data = tmp_path / "pairs.jsonl"
    rows = _pairs_rows(pictures)
    rows[0]["messages"][0]["content"][0]["image"] = "red.png"  # relative to the data file's folder
    (tmp_path / "red.png").write_bytes((pictures / "red.png").read_bytes())
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    logs = logged_steps(wb_cli("dpo", "--model", MODELS[1], "--miniature", "--dataset", str(data), "--lora",
                               "--learning_rate", "5e-3", "--max_steps", "6", "--per_device_train_batch_size", "1",
                               "--logging_steps", "1", "--output_dir", "run", cwd=tmp_path))
    assert len(logs) == 6 and all(torch.isfinite(torch.tensor(e["loss"])) for e in logs)
    assert logs[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # the policy starts as its own reference
    assert logs[-1]["rewards/margins"] > 0  # chosen answers gained on rejected ones, image pairs included
    ckpt = tmp_path / "run" / "checkpoint-6"
    assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "preprocessor_config.json").is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "<image>hi", "chosen": "A", "rejected": "B", "images": ["gone.png"]}) + "\n")
    r = wb_cli("dpo", "--model", MODELS[1], "--miniature", "--dataset", str(bad), "--lora", "--max_steps", "1",
               "--output_dir", "bad", cwd=tmp_path, check=False)
    assert r.returncode == 2 and f"{bad}:1: image {tmp_path / 'gone.png'}: no such file" in r.stderr, r.stderr[-2000:]


@pytest.mark.slow
def test_wb_kto_trains_on_image_and_text_answers(tmp_path, pictures):
    data = tmp_path / "kto.jsonl"
    (tmp_path / "red.png").write_bytes((pictures / "red.png").read_bytes())
    rows = [{"prompt": "<image>Colour?", "completion": "red", "label": True, "images": ["red.png"]},
            {"prompt": "<image>Colour?", "completion": "blue", "label": False, "images": ["red.png"]},
            {"prompt": "Say hi.", "completion": "Hi!", "label": True}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    logs = logged_steps(wb_cli("kto", "--model", MODELS[0], "--miniature", "--dataset", str(data), "--lora",
                               "--max_steps", "3", "--per_device_train_batch_size", "2", "--logging_steps", "1",
                               "--output_dir", "run", cwd=tmp_path))
    assert len(logs) == 3 and all(torch.isfinite(torch.tensor(e["loss"])) for e in logs)
    assert (tmp_path / "run" / "checkpoint-3" / "preprocessor_config.json").is_file()
