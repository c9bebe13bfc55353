"""Videos for Qwen2.5-VL and Qwen3-VL: the frames read, the tokens written (Qwen3-VL's timestamps included), the
pixels and M-RoPE inputs equal transformers' own video processors (recorded in tests/data/video/golden.json by
tests/data/video/make_golden.py: transformers 5.24 with torchvision); video rows pack exactly; video tokens are
never trained; `wb sft` trains on videos end to end and checkpoints and exports carry the video processor; `wb
infer` reads videos as training does and the engine decodes them as transformers' generate; bad video input is
one line. The test videos are generated (tests/data/video/make_media.py)."""
import json
import re
import shutil
import sys

import pytest
import torch

from conftest import DATA, file_server, logged_steps, needs_av, wb_cli
from swiftlike.data.collate import ImageCollate, collate_padded, collate_padding_free
from swiftlike.data.dataset import encode_rows, load_rows
from swiftlike.data.formats import RowError, to_canonical
from swiftlike.data.images import ImageError, ImageProcessing
from swiftlike.models.loader import build_miniature
from swiftlike.registry import find_model
from swiftlike.templates import TemplateError, get_template
from swiftlike.train.loss import CausalLMLoss, packed_mrope_positions

VIDEO = DATA / "video"
GOLDEN = json.loads((VIDEO / "golden.json").read_text())
MODELS = {"qwen2_5_vl": "Qwen/Qwen2.5-VL-3B-Instruct", "qwen3_vl": "Qwen/Qwen3-VL-4B-Instruct"}
FRAMES = [str(VIDEO / f"frame{k}.png") for k in range(3)]
FILE = str(VIDEO / "square.mp4")


def processing(model: str, **video) -> ImageProcessing:
    meta = find_model(model)
    return ImageProcessing(dict(meta.processor), video_config=dict(meta.video_processor) or None, **video)


def vl_template(model: str, tok):
    template = get_template(find_model(model).template, tok)
    template.image_processing = processing(model)
    return template


@pytest.mark.parametrize("case", ["frames", pytest.param("file", marks=needs_av)])
@pytest.mark.parametrize("name", MODELS)
def test_video_tokens_timestamps_and_pixels_equal_the_transformers_processor(qwen3_tokenizer, name, case):
    gold = GOLDEN[f"{name}/{case}"]
    template = vl_template(MODELS[name], qwen3_tokenizer)
    src = FRAMES if case == "frames" else FILE
    messages = [{"role": "user", "content": [{"type": "text", "text": "Watch: "}, {"type": "video", "video": src},
                                             {"type": "text", "text": "What moves?"}]}]
    row = {"messages": [messages[0], {"role": "assistant", "content": "A square."}]}
    (enc,), _ = encode_rows([to_canonical(row)], template, 4096)
    expected = gold["input_ids"]
    if name == "qwen3_vl":
        # transformers 5.24 keeps the template's own <|vision_start|> ... <|vision_end|> around the timestamped
        # frames (a nested span); the original processor (4.57, qwen-vl-utils), which the model was trained with,
        # replaces the whole span in the text and then tokenizes it: that is what we write
        text = qwen3_tokenizer.decode(expected)
        first, last = text.index("<|vision_start|>"), text.rindex("<|vision_end|>")
        text = text[:first] + text[first + len("<|vision_start|>"):last] + text[last + len("<|vision_end|>"):]
        expected = qwen3_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert enc["input_ids"][-len(expected) - 5:-5] == expected  # (+ "A square.<|im_end|>", 5 tokens)
    assert enc["video_grid"] == gold["video_grid_thw"]
    pixels = template.image_processing.video.batch([src])
    assert list(pixels["pixel_values_videos"].shape) == gold["pixels_shape"]
    assert pixels["video_grid_thw"].tolist() == gold["video_grid_thw"]
    assert [float(x) for x in pixels.get("second_per_grid_ts", [])] == pytest.approx(gold["second_per_grid_ts"])
    flat = pixels["pixel_values_videos"].flatten()
    assert [float(flat[i]) for i in (0, 1, 7, 100, 1000, -1)] == pytest.approx(gold["pixels_sample"], abs=2e-2)
    # frames resized with PIL's bicubic, the processor's with torchvision's: the same up to rounding
    assert float(flat.double().abs().sum()) == pytest.approx(gold["pixels_abs_sum"], rel=1e-3)
    assert abs(float(flat.double().sum()) - gold["pixels_sum"]) / flat.numel() < 1e-3


def _rows():
    say = {"role": "assistant", "content": "A white square moves."}
    return [{"messages": [{"role": "user", "content": "<video>What moves?"}, say], "videos": [FILE]},
            {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}]},
            {"messages": [{"role": "user", "content": [{"type": "video", "video": FRAMES},
                                                       {"type": "text", "text": "And here?"}]}, say]},
            {"messages": [{"role": "user", "content": [{"type": "image", "image": FRAMES[0]},
                                                       {"type": "text", "text": "Then"},
                                                       {"type": "video_url", "video_url": {"url": FILE}}]}, say]}]


@needs_av
@pytest.mark.parametrize("model", MODELS.values())
def test_packed_equals_padded_with_videos_images_and_text_rows(model, qwen3_tokenizer):
    template = vl_template(model, qwen3_tokenizer)
    encoded, _ = encode_rows([to_canonical(r) for r in _rows()], template, 4096)
    assert [len(r.get("videos", [])) for r in encoded] == [1, 0, 1, 1]
    image_pad, span = template.image_token_ids
    video_pad = template.video_token_id
    torch.manual_seed(0)
    net = build_miniature(model).eval()
    loss = CausalLMLoss(net)
    padded_collate = lambda r: collate_padded(r, qwen3_tokenizer.pad_token_id)  # noqa: E731
    results = []
    for collate in (collate_padding_free, padded_collate):
        batch = ImageCollate(collate, template.image_processing, image_pad, span, video_pad_id=video_pad)(encoded)
        assert "pixel_values_videos" in batch and "pixel_values" in batch
        assert int((batch["mm_token_type_ids"] == 2).sum()) == int((batch["input_ids"] == video_pad).sum()) > 0
        net.zero_grad()
        total, n, _ = loss(**batch)
        total.backward()
        grads = [p.grad.clone() for p in (net.model.language_model.embed_tokens.weight,
                                          net.model.language_model.layers[0].self_attn.q_proj.weight)]
        results.append((float(total.detach()), int(n), grads, batch))
    (a, n_a, g_a, packed), (b, n_b, g_b, _) = results
    assert n_a == n_b > 0 and a == pytest.approx(b, rel=1e-5)
    for x, y in zip(g_a, g_b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    # the M-RoPE positions of every packed sequence are the model's own for that sequence alone
    positions = packed_mrope_positions(net.model, packed["input_ids"], packed["position_ids"], packed["seq_lens"],
                                       packed)
    start = 0
    for row in encoded:
        alone = ImageCollate(collate_padding_free, template.image_processing, image_pad, span,
                             video_pad_id=video_pad)([row])
        kwargs = {k: alone[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in alone}
        if row.get("images") or row.get("videos"):
            own, _ = net.model.get_rope_index(alone["input_ids"], alone["mm_token_type_ids"], **kwargs)
            assert torch.equal(positions[1:, :, start:start + row["length"]], own[:, :, :row["length"]])
        start += row["length"]


@needs_av
def test_video_tokens_are_never_trained_even_with_loss_scope_all(qwen3_tokenizer):
    template = get_template("qwen3_vl", qwen3_tokenizer, loss_scope="all")
    template.image_processing = processing(MODELS["qwen3_vl"])
    (enc,), _ = encode_rows([to_canonical(_rows()[0])], template, 4096)
    vision = {qwen3_tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|video_pad|>",
                                                                 "<|vision_end|>")}
    assert sum(t in vision for t in enc["input_ids"]) == 3 * 4 + 6  # 3 patches of 4 tokens, each in its span
    assert all(label == -100 for t, label in zip(enc["input_ids"], enc["labels"]) if t in vision)
    assert any(label != -100 for label in enc["labels"])


def test_the_ms_swift_column_equals_video_parts(qwen3_tokenizer):
    template = vl_template(MODELS["qwen2_5_vl"], qwen3_tokenizer)
    column = {"messages": [{"role": "user", "content": "<video>And here?"},
                           {"role": "assistant", "content": "A white square moves."}], "videos": [FRAMES]}
    a, b = (encode_rows([to_canonical(r)], template, 4096)[0][0] for r in (column, _rows()[2]))
    assert a["input_ids"] == b["input_ids"] and a["labels"] == b["labels"] and a["videos"] == b["videos"]


@needs_av
def test_run_options_change_frames_and_tokens():
    base, slow = processing(MODELS["qwen3_vl"]), processing(MODELS["qwen3_vl"], video_fps=1)
    assert len(slow.video.probe(FILE).indices) == 4 < len(base.video.probe(FILE).indices) == 6  # (min 4 frames)
    small = processing(MODELS["qwen3_vl"], video_max_pixels=6 * 64 * 32)
    assert small.video.tokens(small.video.grid(small.video.probe(FILE))) < \
        base.video.tokens(base.video.grid(base.video.probe(FILE)))
    saved = small.saved_files()
    assert json.loads(saved["video_preprocessor_config.json"])["size"]["longest_edge"] == 6 * 64 * 32


@pytest.mark.parametrize("row,message", [
    ({"messages": [{"role": "user", "content": "<video>x"}, {"role": "assistant", "content": "y"}],
      "videos": [FILE, FILE]}, "1 <video> placeholder(s) in the messages but 2 video(s)"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}, {"role": "assistant", "content": "y"}]},
     "a video part needs its source"),
    ({"messages": [{"role": "user", "content": "<video>x"}, {"role": "assistant", "content": "y"}],
      "videos": [[]]}, "'videos' item 0 must be a path, URL, data URI or a list of frame images"),
    ({"prompt": [{"role": "user", "content": [{"type": "video", "video": "a.mp4"}]}], "chosen": "a",
      "rejected": "b"}, "videos are trained by sft only for now"),
])
def test_bad_video_rows_are_one_line_errors(row, message):
    with pytest.raises(RowError, match=re.escape(message)):
        to_canonical(row, "preference" if "chosen" in row else "sft")


@pytest.mark.parametrize("video,message", [
    pytest.param("missing.mp4", "video .*missing.mp4: no such file", marks=needs_av),
    pytest.param("broken.mp4", "video .*broken.mp4: cannot be read", marks=needs_av),
    ([str(VIDEO / "frame0.png"), "small.png"], r"video frames .*frame0.png ... \(2\): frames of different sizes"),
    ([str(VIDEO / "frame0.png")], r"video frames .*: 1 frame\(s\); Qwen3-VL reads at least 2"),
])
def test_bad_videos_name_file_row_and_problem(tmp_path, qwen3_tokenizer, video, message):
    from PIL import Image

    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    Image.new("RGB", (30, 20)).save(tmp_path / "small.png")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "<video>x"},
                                             {"role": "assistant", "content": "y"}], "videos": [video]}) + "\n")
    sources = []
    rows = load_rows([str(data)], sources)
    from swiftlike.errors import UserError

    with pytest.raises(UserError, match=f"d.jsonl:1: {message}"):
        encode_rows(rows, vl_template(MODELS["qwen3_vl"], qwen3_tokenizer), 4096, sources)


def test_a_video_file_without_a_decoder_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImageError, match=r"needs a decoder: pip install av .* a list of frame images needs none"):
        processing(MODELS["qwen3_vl"]).video.probe(FILE)
    assert processing(MODELS["qwen3_vl"]).video.probe(FRAMES).total == 3  # frames need no decoder


def test_a_text_only_template_refuses_videos(qwen3_tokenizer):
    from swiftlike.infer import vision

    with pytest.raises(TemplateError, match="template qwen3 is text-only and cannot read videos"):
        get_template("qwen3", qwen3_tokenizer).encode(to_canonical(_rows()[0]))
    with pytest.raises(TemplateError, match="template qwen3 is text-only and cannot read videos"):
        vision.encode_prompt(get_template("qwen3", qwen3_tokenizer), _rows()[2]["messages"][:1])


@needs_av
@pytest.mark.parametrize("model", MODELS.values())
def test_inference_reads_videos_as_training_does_and_decodes_as_generate(model, qwen3_tokenizer):
    """A prompt with a video is encoded as training encodes it; the engine (a video prompt, an image prompt and
    a text prompt in one batch, M-RoPE positions from the grids) decodes what transformers' generate decodes for
    each prompt alone; the pixels reach the model."""
    from swiftlike.infer import SamplingParams, vision
    from swiftlike.infer.engine import TransformersEngine

    template = vl_template(model, qwen3_tokenizer)
    (trained,), _ = encode_rows([to_canonical(_rows()[2])], template, 4096)
    convs = [_rows()[2]["messages"][:1], [{"role": "user", "content": [{"type": "video", "video": FILE}, "What?"]}],
             _rows()[3]["messages"][:1],
             [{"role": "user", "content": "Say something longer than the others, in plain text."}],
             [{"role": "user", "content": [{"type": "video", "video": FRAMES[::-1]}, "And here?"]}]]
    encoded = [vision.encode_prompt(template, c) for c in convs]
    ids, media = encoded[0]
    assert trained["input_ids"][:len(ids)] == ids and media.videos == [FRAMES]
    same, _ = vision.encode_prompt(template, [{"role": "user", "content": "<video>And here?"}], videos=[FRAMES])
    assert same == ids  # the placeholder form of a data row
    pixels = [vision.pixels(template, m) for _, m in encoded]
    assert pixels[3] is None and "pixel_values" in pixels[2] and "pixel_values_videos" in pixels[2]
    torch.manual_seed(0)
    net = build_miniature(model).eval()
    with TransformersEngine(net, qwen3_tokenizer, template, max_batch_size=8) as engine:
        ours = engine.generate([i for i, _ in encoded], SamplingParams(max_new_tokens=5, logprobs=True), images=pixels)
    video_pad, image_pad = template.video_token_id, template.image_token_ids[0]
    for (prompt, _), px, completions in zip(encoded, pixels, ours):
        x = torch.tensor([prompt])
        types = (x == image_pad).int() + 2 * (x == video_pad).int()
        with torch.no_grad():
            out = net.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=5, do_sample=False,
                               mm_token_type_ids=types, **(px or {}))
        alone = out[0, len(prompt):].tolist()
        assert completions[0].token_ids == alone[:len(completions[0].token_ids)]
    first = [completions[0].logprobs[0]["logprob"] for completions in ours]
    assert first[0] != pytest.approx(first[4], abs=1e-7)  # the same words after other frames


@needs_av
def test_wb_infer_takes_a_video_folder_or_file(tmp_path, monkeypatch, capsys):
    from swiftlike.cli.main import main

    frames = tmp_path / "frames"
    frames.mkdir()
    for k, src in enumerate(FRAMES):
        shutil.copy(src, frames / f"{k:03d}.png")
    for video in (str(frames), FILE):
        assert main(["infer", "--model", MODELS["qwen3_vl"], "--miniature", "--video", video, "--query", "What moves?",
                     "--max_new_tokens", "3"]) == 0
    assert main(["infer", "--model", MODELS["qwen3_vl"], "--miniature", "--video", str(tmp_path), "--query", "x"]) == 2
    assert "a folder without .png/.jpg/.webp frames" in capsys.readouterr().err
    # --dataset rows with videos (paths relative to the data file); the output lines name them
    shutil.copy(FILE, tmp_path / "square.mp4")
    (tmp_path / "d.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "<video>What moves?"}],
                                                  "videos": ["square.mp4"]}) + "\n")
    assert main(["infer", "--model", MODELS["qwen3_vl"], "--miniature", "--dataset", str(tmp_path / "d.jsonl"),
                 "--output", str(tmp_path / "out.jsonl"), "--max_new_tokens", "3"]) == 0
    line = json.loads((tmp_path / "out.jsonl").read_text())
    assert line["videos"] == ["square.mp4"] and line["response"] is not None


@needs_av
@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS.values())
def test_wb_sft_trains_on_videos_and_the_export_carries_the_video_processor(model, tmp_path):
    for name in ("square.mp4", "frame0.png", "frame1.png", "frame2.png"):
        shutil.copy(VIDEO / name, tmp_path / name)
    rows = [{"messages": [{"role": "user", "content": "<video>What moves?"},
                          {"role": "assistant", "content": "A white square."}], "videos": ["square.mp4"]},
            {"messages": [{"role": "user", "content": [{"type": "video", "video": [f"frame{k}.png" for k in range(3)]},
                                                       {"type": "text", "text": "And here?"}]},
                          {"role": "assistant", "content": "The square again."}]}]
    (tmp_path / "v.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = wb_cli("sft", "--model", model, "--miniature", "--dataset", "v.jsonl", "--lora", "--max_steps", "4",
                 "--per_device_train_batch_size", "2", "--video_fps", "1", "--logging_steps", "1", "--output_dir",
                 "run", cwd=tmp_path)
    losses = [step["loss"] for step in logged_steps(out)]
    assert len(losses) == 4 and losses[-1] < losses[0]
    ckpt = tmp_path / "run" / "checkpoint-4"
    video = json.loads((ckpt / "video_preprocessor_config.json").read_text())
    assert video["fps"] == 1.0 and json.loads((ckpt / "args.json").read_text())["video_fps"] == 1.0
    wb_cli("export", "--adapters", str(ckpt), "--merge", "--output_dir", "merged", cwd=tmp_path)
    assert json.loads((tmp_path / "merged" / "video_preprocessor_config.json").read_text()) == video
    preview = wb_cli("data", "preview", "--model", model, "--miniature", "--dataset", "v.jsonl", "--video_fps",
                     "1", cwd=tmp_path).stdout
    assert "1 video(s)" in preview and "⟪video square.mp4:" in preview
    assert "⟪video frame0.png... (3 frames):" in preview


@needs_av
def test_deploy_answers_video_url_parts_as_the_engine_does(qwen3_tokenizer):
    import base64

    import openai
    from openai import OpenAI

    from swiftlike.infer import SamplingParams, vision
    from swiftlike.infer.engine import TransformersEngine
    from swiftlike.serve import BackgroundServer, ServeSettings, create_app

    template = vl_template(MODELS["qwen2_5_vl"], qwen3_tokenizer)
    net = build_miniature(MODELS["qwen2_5_vl"]).eval()
    uri = "data:video/mp4;base64," + base64.b64encode((VIDEO / "square.mp4").read_bytes()).decode()
    engine = TransformersEngine(net, qwen3_tokenizer, template, max_batch_size=4)
    try:
        with BackgroundServer(create_app(engine, ServeSettings(model_name="vl", max_model_len=4096))) as server:
            client = OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
            content = [{"type": "video_url", "video_url": {"url": uri}}, {"type": "text", "text": "What moves?"}]
            r = client.chat.completions.create(model="vl", messages=[{"role": "user", "content": content}],
                                               max_tokens=4, temperature=0)
            ids, media = vision.encode_prompt(template, [{"role": "user", "content": content}])
            direct = engine.generate([ids], SamplingParams(max_new_tokens=4), images=[vision.pixels(template, media)])
            assert r.choices[0].message.content == template.parse_response(direct[0][0].text)["content"]
            assert r.usage.prompt_tokens == len(ids)
            for url, message in ((FILE, "a file path; send videos as data: URIs"),
                                 ("data:video/mp4;base64,bm90IGEgdmlkZW8=", "cannot be read")):
                bad = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "?"}]
                with pytest.raises(openai.BadRequestError, match=message):
                    client.chat.completions.create(model="vl", messages=[{"role": "user", "content": bad}],
                                                   max_tokens=2)
    finally:
        engine.close()


@needs_av
def test_a_video_url_is_downloaded_once_and_reads_as_the_file(qwen3_tokenizer):
    """A video's header is read when the prompt is encoded and its frames when its pixels are: one download."""

    from swiftlike.infer import vision

    with file_server(VIDEO) as (base, served):
        template = vl_template(MODELS["qwen3_vl"], qwen3_tokenizer)
        url = f"{base}/square.mp4"
        ids, media = vision.encode_prompt(template, [{"role": "user", "content": [{"type": "video", "video": url}]}],
                                          files=False)
        local, _ = vision.encode_prompt(template, [{"role": "user", "content": [{"type": "video", "video": FILE}]}])
        assert ids == local and media.videos == [url]
        assert torch.equal(vision.pixels(template, media)["pixel_values_videos"],
                           vision.pixels(template, vision.Media(videos=[FILE]))["pixel_values_videos"])
        assert served == ["/square.mp4"]
