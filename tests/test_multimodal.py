"""Vision-language training on Qwen2.5-VL and Qwen3-VL miniatures: image tokens as many as the official processor
makes, padding-free (packed) batches equal padded ones with M-RoPE positions equal to the model's own per
sequence, a miniature that learns to name colours from images, the parts LoRA and --full train, and bad image input
as one-line errors. Images are generated here (docs/multimodal.md)."""
import json
import subprocess
import sys

import pytest
import torch
from conftest import logged_steps, wb_cli
from PIL import Image

from swiftlike.data.collate import ImageCollate, collate_padded, collate_padding_free
from swiftlike.data.dataset import encode_rows, load_rows
from swiftlike.data.images import ImageProcessing, expand
from swiftlike.models.loader import build_miniature, vision_language_targets
from swiftlike.registry import find_model
from swiftlike.templates import get_template
from swiftlike.train.loss import CausalLMLoss, packed_mrope_positions

MODELS = ["Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen3-VL-4B-Instruct"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def processing(model: str, **bounds) -> ImageProcessing:
    return ImageProcessing(dict(find_model(model).processor), **bounds)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("size", [(640, 480), (64, 64), (100, 1000), (1500, 333), (28, 28)])
def test_image_tokens_equal_the_official_processor(model, size):
    proc = processing(model)
    official = proc.processor(images=[Image.new("RGB", size, (1, 2, 3))], return_tensors="pt")["image_grid_thw"][0]
    grid = proc.grid(*size)
    assert list(grid) == official.tolist()
    if size == (640, 480):  # the measured counts of the official processors
        assert proc.tokens(grid) == {"Qwen/Qwen2.5-VL-3B-Instruct": 391, "Qwen/Qwen3-VL-4B-Instruct": 300}[model]


def test_an_image_the_processor_cannot_resize_is_refused_by_name():
    from swiftlike.data.images import ImageError

    with pytest.raises(ImageError, match=r"image strip.png \(20000x40\): .*aspect ratio"):
        processing(MODELS[1]).grid(20000, 40, src="strip.png")


def test_pixel_bounds_change_the_token_count():
    big = processing(MODELS[0]).grid(640, 480)
    small = processing(MODELS[0], max_pixels=128 * 28 * 28).grid(640, 480)
    assert processing(MODELS[0]).tokens(small) <= 128 < processing(MODELS[0]).tokens(big)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    out = {}
    for name, rgb in COLOURS.items():
        for w, h in ((64, 64), (96, 64), (64, 128)):
            path = root / f"{name}_{w}x{h}.png"
            Image.new("RGB", (w, h), rgb).save(path)
            out[(name, w, h)] = path
    return root, out


def _rows(images):
    _, paths = images
    rows = [{"messages": [{"role": "user", "content": "<image>What colour is this?"},
                          {"role": "assistant", "content": f"It is {name}."}], "images": [str(p)]}
            for (name, _, _), p in paths.items()]
    rows.insert(2, {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}]})
    two = list(paths.values())[:2]
    rows.insert(5, {"messages": [{"role": "user", "content": "Compare <image> with <image>."},
                                 {"role": "assistant", "content": "Different."}], "images": [str(p) for p in two]})
    return rows


@pytest.mark.parametrize("model", MODELS)
def test_packed_equals_padded_with_images_and_text_only_rows(model, qwen3_tokenizer, images):
    template = get_template(find_model(model).template, qwen3_tokenizer)
    template.image_processing = processing(model)
    encoded, _ = encode_rows(_rows(images), template, 4096)
    pad_id = qwen3_tokenizer.convert_tokens_to_ids("<|image_pad|>")
    net = build_miniature(model).eval()
    loss = CausalLMLoss(net)
    span = tuple(qwen3_tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>"))
    packed = ImageCollate(collate_padding_free, template.image_processing, pad_id, span)(encoded)
    padded = ImageCollate(lambda r: collate_padded(r, qwen3_tokenizer.pad_token_id), template.image_processing,
                          pad_id, span)(encoded)
    with torch.no_grad():
        a, n_a, _ = loss(**packed)
        b, n_b, _ = loss(**padded)
    assert int(n_a) == int(n_b) > 0
    assert float(a) == pytest.approx(float(b), rel=1e-5)
    # a batch without images (it gets a blank image in an untrained sequence of its own, so that the vision tower
    # runs on every batch): packed == padded == the model's own loss without it
    text = [r for r in encoded if not r.get("images")] * 2
    plain = collate_padded(text, qwen3_tokenizer.pad_token_id)
    with torch.no_grad():
        blank = ImageCollate(collate_padding_free, template.image_processing, pad_id, span)(text)
        assert "pixel_values" in blank and int(blank["mm_token_type_ids"].sum()) > 0
        c, n_c, _ = loss(**blank)
        d, n_d, _ = loss(**ImageCollate(lambda r: collate_padded(r, qwen3_tokenizer.pad_token_id),
                                        template.image_processing, pad_id, span)(text))
        logits = net(input_ids=plain["input_ids"], attention_mask=plain["attention_mask"]).logits
        own = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), plain["targets"].flatten(),
                                                ignore_index=-100, reduction="sum")
    assert int(n_c) == int(n_d) == int((plain["targets"] != -100).sum())
    assert float(c) == pytest.approx(float(d), rel=1e-5) and float(d) == pytest.approx(float(own), rel=1e-5)
    # the M-RoPE positions of every packed sequence are the model's own for that sequence alone
    positions = packed_mrope_positions(net.model, packed["input_ids"], packed["position_ids"], packed["seq_lens"],
                                       packed)
    start, k = 0, 0
    grids = packed["image_grid_thw"]
    for row in encoded:
        n, m = row["length"], len(row.get("images", []))
        ids = packed["input_ids"][:, start:start + n]
        if m:
            own, _ = net.model.get_rope_index(ids, packed["mm_token_type_ids"][:, start:start + n],
                                              image_grid_thw=grids[k:k + m])
            assert torch.equal(positions[1:, :, start:start + n], own)
        assert positions[0, 0, start:start + n].tolist() == list(range(n))
        start, k = start + n, k + m


def test_image_spans_are_never_trained(qwen3_tokenizer, images):
    template = get_template("qwen3_vl", qwen3_tokenizer, "all")  # every text token trained
    template.image_processing = processing(MODELS[1])
    row = _rows(images)[0]
    enc = template.encode(row)
    pad = qwen3_tokenizer.convert_tokens_to_ids("<|image_pad|>")
    span = tuple(qwen3_tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>"))
    out = expand(enc, row["images"], template.image_processing, pad, span)
    assert out["input_ids"].count(pad) == template.image_processing.tokens(out["image_grid"][0]) > 1
    assert all(label == -100 for token, label in zip(out["input_ids"], out["labels"]) if token in (pad, *span))


def test_lora_targets_and_full_training_respect_the_freeze_flags():
    from types import SimpleNamespace

    from swiftlike.models.loader import freeze_vision_parts

    net = build_miniature(MODELS[0])
    flags = dict(freeze_vit=True, freeze_aligner=True, freeze_llm=False)
    default = vision_language_targets(net, SimpleNamespace(**flags))
    assert default and all("visual" not in n for n in default) and not any(n.endswith("lm_head") for n in default)
    with_vit = vision_language_targets(net, SimpleNamespace(**{**flags, "freeze_vit": False}))
    assert any(".blocks." in n for n in with_vit) and not any("merger" in n for n in with_vit)
    freeze_vision_parts(net.requires_grad_(True), SimpleNamespace(**{**flags, "freeze_aligner": False}))
    trains = {n for n, p in net.named_parameters() if p.requires_grad}
    assert any("merger" in n for n in trains) and not any(".blocks." in n for n in trains)
    assert any("language_model" in n for n in trains)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_a_miniature_learns_to_name_colours_from_images(model, tmp_path, images):
    """SFT from the CLI (full language model; the vision tower and merger stay frozen by default: a random
    miniature's frozen output layer makes one-token answers slow to learn with LoRA); the trained model then
    answers each colour's images, of three sizes, with that colour."""
    root, paths = images
    data = tmp_path / "colours.jsonl"
    with data.open("w") as f:
        for (name, _, _), p in paths.items():
            f.write(json.dumps({"messages": [{"role": "user", "content": [{"type": "image", "image": p.name},
                                                                          {"type": "text", "text": "Colour?"}]},
                                             {"role": "assistant", "content": name}]}) + "\n")
    for p in paths.values():  # relative paths are read from the data file's folder
        (tmp_path / p.name).write_bytes(p.read_bytes())
    r = wb_cli("sft", "--model", model, "--miniature", "--dataset", str(data), "--max_steps", "80", "--logging_steps",
               "10", "--per_device_train_batch_size", "3", "--full", "--output_dir", "run", cwd=tmp_path, timeout=900)
    losses = [step["loss"] for step in logged_steps(r)]
    assert len(losses) == 8 and losses[-1] < 0.2 * losses[0], losses
    ckpt = tmp_path / "run" / "checkpoint-80"
    assert json.loads((ckpt / "preprocessor_config.json").read_text())["patch_size"] == \
        find_model(model).processor["patch_size"]
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    trained, base = load_file(str(ckpt / "model.safetensors")), load_file(str(tmp_path / "run" / "base_model" /
                                                                               "model.safetensors"))
    visual = [k for k in base if "visual" in k]
    # --freeze_vit, --freeze_aligner (compared in the checkpoint's dtype: on a GPU the run trains and saves in bf16)
    assert visual and all(torch.equal(trained[k], base[k].to(trained[k].dtype)) for k in visual)
    assert AutoModelForImageTextToText.from_pretrained(ckpt) is not None  # plain transformers reads it

    # the trained model answers through `wb infer`: each data row's images (relative to the data file's folder) ...
    r = wb_cli("infer", "--model", str(ckpt), "--dataset", str(data), "--output", "answers.jsonl", "--max_new_tokens",
               "2", cwd=tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert len(lines) == 9 and all(line["response"] == line["reference"] for line in lines), lines
    assert lines[0]["images"] == [next(iter(paths.values())).name]
    # ... and --image beside --query (a path relative to the working directory)
    if model == MODELS[0]:
        r = wb_cli("infer", "--model", str(ckpt), "--image", paths[("blue", 96, 64)].name, "--query", "Colour?",
                   "--max_new_tokens", "2", cwd=tmp_path)
        assert r.stdout.strip().splitlines()[-1] == "blue", r.stdout + r.stderr[-2000:]


def test_bad_image_input_is_one_line_naming_file_row_and_image(tmp_path, qwen3_tokenizer):
    good = tmp_path / "ok.png"
    Image.new("RGB", (64, 64)).save(good)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows = [{"messages": [{"role": "user", "content": "<image>x"}, {"role": "assistant", "content": "y"}],
             "images": ["ok.png"]},
            {"messages": [{"role": "user", "content": "<image>x"}, {"role": "assistant", "content": "y"}],
             "images": ["missing.png"]},
            {"messages": [{"role": "user", "content": "<image>x"}, {"role": "assistant", "content": "y"}],
             "images": ["broken.png"]},
            {"messages": [{"role": "user", "content": "<image>x"}, {"role": "assistant", "content": "y"}],
             "images": ["ok.png"]}]
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    template = get_template("qwen3_vl", qwen3_tokenizer)
    template.image_processing = processing(MODELS[1])
    sources = []
    loaded = load_rows([str(data)], sources)
    from swiftlike.errors import UserError

    with pytest.raises(UserError, match=rf"{data}:2: image {tmp_path / 'missing.png'}: no such file"):
        encode_rows(loaded, template, 4096, sources)
    encoded, stats = encode_rows(loaded, template, 4096, sources, skip_bad_rows=True)
    assert len(encoded) == 2 and sum(stats.dropped.values()) == 2
    assert any("broken.png: cannot be read" in reason for reason in stats.dropped)
    # through the CLI: one line, exit 2
    r = wb_cli("sft", "--model", MODELS[1], "--miniature", "--dataset", str(data), "--output_dir", "run", cwd=tmp_path,
               check=False)
    assert r.returncode == 2 and "missing.png: no such file" in r.stderr and "Traceback" not in r.stderr
    r = wb_cli("sft", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--dataset", str(data), "--output_dir", "run",
               cwd=tmp_path, check=False)
    assert r.returncode == 2 and "template qwen3 is text-only and cannot read images" in r.stderr


def test_odd_but_common_image_input(tmp_path, qwen3_tokenizer):
    """A phone photo's EXIF orientation (it was trained sideways: grid and pixels transposed against transformers'
    load_image), file:// URIs (a path under the data folder was made of them), a parquet image column with its
    bytes (HF datasets' Image; once refused), a decompression bomb and a literal <|image_pad|> in the text
    (tracebacks; the server answered 500), an <image> in a system message (a count error that named no
    message)."""
    from transformers.image_utils import load_image

    from swiftlike.data.formats import to_canonical
    from swiftlike.data.images import ImageError, image_size, open_image, resolve_source
    from swiftlike.templates.errors import TemplateError

    photo = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    Image.new("RGB", (64, 32), (200, 10, 10)).save(photo, exif=exif)
    assert image_size(str(photo)) == open_image(str(photo)).size == load_image(str(photo)).size == (32, 64)
    assert resolve_source(f"file://{tmp_path}/a%20b.png", tmp_path / "elsewhere") == f"{tmp_path}/a b.png"
    png = tmp_path / "red.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(png)
    row = {"messages": [{"role": "user", "content": "<image>x"}, {"role": "assistant", "content": "y"}],
           "images": [{"bytes": png.read_bytes(), "path": "gone.png"}]}
    (source,) = to_canonical(row, "sft")["images"]
    assert open_image(source).getpixel((0, 0)) == (255, 0, 0)
    import base64  # a data URI's base64 wrapped in lines (base64.encodebytes, MIME): once refused

    assert open_image("data:image/png;base64," + base64.encodebytes(png.read_bytes()).decode()).size == (8, 8)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)
    for read in (image_size, open_image):
        with pytest.raises(ImageError, match="bomb.png: cannot be read .*decompression bomb"):
            read(str(bomb))
    template = get_template("qwen3_vl", qwen3_tokenizer)
    for text in ("What is <|image_pad|>?", "<|vision_start|>"):
        with pytest.raises(TemplateError, match=r"message 0 \(user\) holds <\|(image_pad|vision_start)\|>, a token "
                                                "the template writes itself"):
            template.encode({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "y"}]})
    from swiftlike.data.formats import RowError

    with pytest.raises(RowError, match=r"message 0 \(system\) holds a <image> placeholder"):
        to_canonical({"messages": [{"role": "system", "content": "<image>s"}, {"role": "user", "content": "x"},
                                   {"role": "assistant", "content": "y"}], "images": ["red.png"]}, "sft")


def test_a_truncated_image_found_while_training_is_one_line(tmp_path):
    """Its header reads (the data is prepared), its pixels do not: once a traceback when its batch was drawn."""
    from swiftlike.data.collate import ImageCollate
    from swiftlike.errors import UserError

    good = tmp_path / "ok.png"
    Image.effect_noise((64, 64), 50).convert("RGB").save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    collate = ImageCollate(None, processing(MODELS[0]), 0, (1, 2))
    with pytest.raises(UserError, match=r"cut.png: cannot be read .*; replace or remove the file"):
        collate.add_images({"input_ids": torch.zeros(1, 4, dtype=torch.long)}, [{"images": [str(cut)]}])


def test_skip_bad_rows_skips_unreadable_images_in_dpo_kto_and_grpo_data(tmp_path, qwen3_tokenizer):
    """(wb sft skipped them; wb dpo, kto and grpo stopped at the first)."""
    from swiftlike.data.formats import to_canonical
    from swiftlike.data.pairs import encode_kto, encode_pairs
    from swiftlike.errors import UserError
    from swiftlike.pipelines.grpo import encode_prompts

    Image.new("RGB", (64, 64)).save(tmp_path / "ok.png")
    template = get_template("qwen3_vl", qwen3_tokenizer)
    template.image_processing = processing(MODELS[1])
    prompt = [{"role": "user", "content": "<image>x"}]
    images = [[str(tmp_path / "ok.png")], [str(tmp_path / "missing.png")], [str(tmp_path / "ok.png")]]
    pairs = [to_canonical({"prompt": prompt, "chosen": "a", "rejected": "b", "images": i}, "preference")
             for i in images]
    kto = [to_canonical({"messages": prompt + [{"role": "assistant", "content": "a"}], "label": k < 2,
                         "images": i}, "kto") for k, i in enumerate(images)]
    grpo = [to_canonical({"messages": prompt, "images": i}, "grpo") for i in images]
    sources = ["d.jsonl:1", "d.jsonl:2", "d.jsonl:3"]
    from swiftlike.data.dataset import DataStats

    encoders = [lambda rows, **kw: encode_pairs(rows, template, 4096, None, sources, **kw)[0],
                lambda rows, **kw: encode_kto(rows, template, 4096, None, sources, **kw)[0],
                lambda rows, **kw: encode_prompts(rows, template, 4096, DataStats(), None, sources, **kw)]
    for rows, encode in zip((pairs, kto, grpo), encoders):
        with pytest.raises(UserError, match="d.jsonl:2: image .*missing.png: no such file"):
            encode(rows)
        assert len(encode(rows, skip_bad_rows=True)) == 2


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_a_merged_vl_export_reloads_with_plain_transformers(model, tmp_path, images):
    """wb export --merge of a VL LoRA checkpoint: a separate process without swiftlike loads the model, tokenizer and
    image processor from the folder; with an image its logits equal base + adapter, and the exported chat template
    renders image parts as our template does."""
    _, paths = images
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": "<image>Colour?"},
                                                       {"role": "assistant", "content": name}],
                                          "images": [str(p)]}) for (name, _, _), p in paths.items()) + "\n")
    r = wb_cli("sft", "--model", model, "--miniature", "--dataset", str(data), "--max_steps", "3", "--max_pixels",
               "9000", "--output_dir", "run", cwd=tmp_path)
    ckpt = tmp_path / "run" / "checkpoint-3"
    r = wb_cli("export", "--adapters", str(ckpt), "--merge", "--torch_dtype", "float32", "--output_dir", "merged",
               cwd=tmp_path)
    assert "AutoModelForImageTextToText" in r.stdout, r.stderr[-3000:]
    out = tmp_path / "merged"
    assert json.loads((out / "preprocessor_config.json").read_text())["size"]["longest_edge"] == 9000
    image = str(paths[("red", 96, 64)])
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Colour?"}]}]
    probe = f"""
import json, sys, torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoTokenizer
from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil
out = sys.argv[1]
tok = AutoTokenizer.from_pretrained(out)
cfg = {{k: v for k, v in json.load(open(out + "/preprocessor_config.json")).items()
        if k not in ("processor_class", "image_processor_type")}}
pixels = Qwen2VLImageProcessorPil(**cfg)(images=[Image.open({image!r}).convert("RGB")], return_tensors="pt")
text = tok.apply_chat_template({messages!r}, tokenize=False, add_generation_prompt=True)
n = int(pixels["image_grid_thw"].prod()) // 4
ids = tok(text.replace("<|image_pad|>", "<|image_pad|>" * n), add_special_tokens=False)["input_ids"]
model = AutoModelForImageTextToText.from_pretrained(out).eval()
input_ids = torch.tensor([ids])
with torch.no_grad():
    logits = model(input_ids=input_ids, mm_token_type_ids=(input_ids == tok.convert_tokens_to_ids("<|image_pad|>")).int(),
                   **pixels).logits[0, -1]
print(json.dumps({{"text": text, "ids": ids, "logits": logits.tolist()}}))
"""
    shown = subprocess.run([sys.executable, "-c", probe, str(out)], capture_output=True, text=True, timeout=600)
    assert shown.returncode == 0, shown.stderr[-3000:]
    theirs = json.loads(shown.stdout.strip().splitlines()[-1])
    from peft import PeftModel
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    template = get_template(find_model(model).template, tok)
    assert theirs["text"] == template.render_text(messages, add_generation_prompt=True)
    proc = ImageProcessing.from_dir(ckpt)
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    span = tuple(tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>"))
    ids = template.encode_prompt(messages)
    enc = expand({"input_ids": ids, "labels": ids, "length": len(ids)}, [image], proc, pad, span)
    assert enc["input_ids"] == theirs["ids"]
    base = PeftModel.from_pretrained(build_miniature(model), ckpt).eval()
    input_ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
        ours = base(input_ids=input_ids, mm_token_type_ids=(input_ids == pad).int(), **proc.batch([image])).logits[0, -1]
    assert torch.allclose(ours, torch.tensor(theirs["logits"]), atol=1e-4)


def test_data_preview_marks_each_image_with_its_token_count(tmp_path, images, capsys):
    from swiftlike.cli.main import main

    _, paths = images
    data = tmp_path / "d.jsonl"
    red = paths[("red", 64, 64)]
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "<image>Colour?"},
                                             {"role": "assistant", "content": "red"}], "images": [str(red)]}) + "\n")
    assert main(["data", "preview", "--model", MODELS[1], "--miniature", "--dataset", str(data)]) == 0
    shown = capsys.readouterr().out
    # 64x64 grows to Qwen3-VL's minimum of 65536 pixels: 256x256, a 16x16 grid of 16-pixel patches, 64 tokens
    assert "<|vision_start|>⟪image red_64x64.png: 64 tokens, grid 1x16x16⟫<|vision_end|>Colour?" in shown
    assert "1 image(s)" in shown and "⟦red<|im_end|>⟧" in shown
    assert main(["data", "preview", "--model", MODELS[1], "--miniature", "--dataset", str(data), "--json",
                 "--max_pixels", "4096"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["images"] == [str(red)] and row["image_grid"] == [[1, 4, 4]]
    assert row["input_ids"].count(151655) == 4


@pytest.mark.slow
@pytest.mark.usefixtures("cpu_processes")
@pytest.mark.parametrize("engine", [["--freeze_vit", "false"], ["--deepspeed", "zero3"]], ids=["ddp-vit", "zero3"])
def test_two_processes_one_with_images_one_text_only(tmp_path, images, engine):
    """Each step one rank draws the image row and the other the text-only row: the text-only batch carries a blank
    image in an untrained sequence of its own, so that both ranks run the same modules in the same order (DDP with
    a trainable vision side reduces its gradients, ZeRO-3 gathers weights module by module); the losses equal one
    process's."""
    pytest.importorskip("deepspeed")
    _, paths = images
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "<image>Colour?"},
                                             {"role": "assistant", "content": "red"}],
                                "images": [str(paths[("red", 64, 64)])]}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "Say hi."},
                                               {"role": "assistant", "content": "Hi."}]}) + "\n")
    common = ["sft", "--model", MODELS[1], "--miniature", "--dataset", str(data), "--max_steps", "3",
              "--logging_steps", "1", "--lora_dropout", "0", "--per_device_train_batch_size", "1", *engine]
    one = wb_cli(*common, "--gradient_accumulation_steps", "2", "--output_dir", "one", cwd=tmp_path)
    two = wb_cli(*common, "--nproc_per_node", "2", "--output_dir", "two", cwd=tmp_path)
    losses = [[step["loss"] for step in logged_steps(r)] for r in (one, two)]
    assert len(losses[0]) == 3 and losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_vit_and_aligner_learning_rates_are_their_own_param_groups(tmp_path):
    from types import SimpleNamespace

    from swiftlike.models.loader import freeze_vision_parts
    from swiftlike.train.engines import DDPEngine, EngineSettings

    net = build_miniature(MODELS[1])
    freeze_vision_parts(net.requires_grad_(True), SimpleNamespace(freeze_vit=False, freeze_aligner=False,
                                                                  freeze_llm=False))
    engine = DDPEngine(CausalLMLoss(net), net, EngineSettings(1e-4, 0.0, 1.0, 1, {"vit": 1e-6, "aligner": 1e-5}))
    groups = {g["lr"]: g["params"] for g in engine.optimizer.param_groups}
    assert list(groups) == [1e-4, 1e-6, 1e-5]  # the run's first: the one the logs show
    names = {id(p): n for n, p in net.named_parameters()}
    assert all(".visual." in names[id(p)] and "merger" not in names[id(p)] for p in groups[1e-6])
    assert all("merger" in names[id(p)] for p in groups[1e-5])
    assert sum(len(g) for g in groups.values()) == sum(p.requires_grad for p in net.parameters())
    r = wb_cli("sft", "--model", MODELS[1], "--miniature", "--dataset", "x.jsonl", "--vit_lr", "1e-5", cwd=tmp_path,
               check=False)
    assert r.returncode == 2 and "--vit_lr must be positive and needs --freeze_vit false" in r.stderr


def test_a_resume_keeps_the_vision_parts_it_trained(images, tmp_path, capsys):
    """--freeze_vit / --freeze_aligner / --freeze_llm decide which parts train (LoRA: which get adapters); a resume
    with others would load the saved adapters or moments into other parameters."""
    from swiftlike.cli.main import main

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _rows(images)) + "\n")
    common = ["sft", "--model", MODELS[0], "--miniature", "--dataset", str(data), "--max_steps", "1",
              "--output_dir", str(tmp_path / "run")]
    assert main(common) == 0
    capsys.readouterr()
    assert main([*common, "--max_steps", "2", "--resume", "--freeze_vit", "false"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"wb: error: {tmp_path / 'run' / 'checkpoint-1'} was started with --freeze_vit true, this run asks for "
        "false; resume with the LoRA options it was started with")
