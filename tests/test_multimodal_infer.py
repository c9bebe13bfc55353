"""Inference and serving with images on Qwen2.5-VL and Qwen3-VL miniatures: the continuous-batching engine (image
and text prompts in one batch, M-RoPE positions from the images' grids) decodes the same greedy tokens as
transformers' own `generate` on each prompt alone; `wb deploy` answers OpenAI `image_url` parts as the engine does;
bad images are one-line errors (docs/multimodal.md). The trained-model path (`wb infer --image`, `--dataset` rows
with images) is tested where a miniature learns colours (tests/test_multimodal.py)."""
import base64
import io

import openai
import pytest
import torch
from openai import OpenAI
from PIL import Image

from conftest import file_server

from swiftlike.errors import UserError
from swiftlike.infer import SamplingParams, vision
from swiftlike.infer.engine import TransformersEngine
from swiftlike.models.resolve import load_for_inference
from swiftlike.serve import BackgroundServer, ServeSettings, create_app

MODELS = ["Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen3-VL-4B-Instruct"]


def _user(*parts):
    return [{"role": "user", "content": [{"type": "image", "image": p} if isinstance(p, str) and p.endswith(".png")
                                         else {"type": "text", "text": p} for p in parts]}]


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    root = tmp_path_factory.mktemp("pictures")
    out = {}
    for name, size, rgb in (("red", (64, 96), (200, 30, 30)), ("blue", (128, 64), (30, 30, 200)),
                            ("noise", (96, 96), None)):
        image = Image.new("RGB", size, rgb) if rgb else Image.effect_noise(size, 80).convert("RGB")
        image.save(root / f"{name}.png")
        out[name] = str(root / f"{name}.png")
    return out


@pytest.fixture(scope="module", params=MODELS)
def vl(request):
    net, tok, template = load_for_inference(request.param, miniature=True, torch_dtype="float32")
    return net, tok, template


def _reference(net, template, ids, pixels, n):
    """transformers' own greedy generation of one prompt (positions from its get_rope_index)."""
    x = torch.tensor([ids], device=net.device)
    pixels = {k: v.to(net.device) if isinstance(v, torch.Tensor) else v for k, v in (pixels or {}).items()}
    with torch.no_grad():
        out = net.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                           mm_token_type_ids=(x == template.image_token_ids[0]).int(), **pixels)
    return out[0, len(ids):].tolist()


def test_engine_batches_image_and_text_prompts_as_generate_decodes_each_alone(vl, pictures):
    net, tok, template = vl
    convs = [_user(pictures["red"], "Colour?"),
             _user(pictures["blue"], "and", pictures["noise"], "which is larger?"),
             [{"role": "user", "content": "A text-only prompt, longer than the others in words at least."}],
             _user(pictures["noise"], "Colour?")]
    encoded = [vision.encode_prompt(template, c) for c in convs]
    pixels = [vision.pixels(template, sources) for _, sources in encoded]
    assert [len(s.images) for _, s in encoded] == [1, 2, 0, 1] and pixels[2] is None
    with TransformersEngine(net, tok, template, max_batch_size=8) as engine:
        ours = engine.generate([ids for ids, _ in encoded], SamplingParams(max_new_tokens=6, logprobs=True),
                               images=pixels)
    for (ids, _), px, completions in zip(encoded, pixels, ours):
        assert completions[0].token_ids == _reference(net, template, ids, px, 6)[:len(completions[0].token_ids)]
    # the same words after a different image: the pixels reach the model
    first = [completions[0].logprobs[0]["logprob"] for completions in ours]
    assert first[0] != pytest.approx(first[3], abs=1e-6)


def test_the_prompt_is_encoded_as_training_encodes_it(vl, pictures):
    from swiftlike.data.dataset import encode_images

    _, _, template = vl
    messages = _user(pictures["red"], "Colour?") + [{"role": "assistant", "content": "red"}]
    trained = encode_images(template, {"images": [pictures["red"]]},
                            template.encode({"messages": [{"role": "user", "content": "<image>Colour?"},
                                                          {"role": "assistant", "content": "red"}],
                                             "images": [pictures["red"]]}))
    ids, _ = vision.encode_prompt(template, messages[:1])
    assert trained["input_ids"][:len(ids)] == ids
    # the placeholder form of a data row gives the same ids
    same, sources = vision.encode_prompt(template, [{"role": "user", "content": "<image>Colour?"}],
                                         images=["red.png"], base=__import__("pathlib").Path(pictures["red"]).parent)
    assert same == ids and sources.images == [pictures["red"]] and not sources.videos


def test_bad_images_are_one_line_errors(vl, pictures, qwen3_tokenizer):
    net, tok, template = vl
    with pytest.raises(UserError, match=r"image .*missing.png: no such file"):
        vision.encode_prompt(template, _user("/nowhere/missing.png", "hi"))
    with pytest.raises(UserError, match=r"1 <image> placeholder\(s\) in the messages but 2 image\(s\)"):
        vision.encode_prompt(template, [{"role": "user", "content": "<image>hi"}], images=[pictures["red"]] * 2)
    with pytest.raises(UserError, match="a file path; send images as data: URIs"):
        vision.encode_prompt(template, _user(pictures["red"], "hi"), files=False)
    from swiftlike.templates import get_template

    with pytest.raises(UserError, match="template qwen3 is text-only and cannot read images"):
        vision.encode_prompt(get_template("qwen3", qwen3_tokenizer), _user(pictures["red"], "hi"))


def test_a_text_model_refuses_pixels():
    net, tok, template = load_for_inference("Qwen/Qwen3-0.6B", miniature=True, torch_dtype="float32")
    with TransformersEngine(net, tok, template) as engine:
        with pytest.raises(UserError, match="this model reads no images"):
            engine.submit([1, 2, 3], SamplingParams(max_new_tokens=2),
                          images={"pixel_values": torch.zeros(4, 4), "image_grid_thw": torch.tensor([[1, 2, 2]])})


def _data_uri(path: str) -> str:
    buf = io.BytesIO()
    Image.open(path).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_deploy_answers_image_url_parts_as_the_engine_does(vl, pictures):
    net, tok, template = vl
    engine = TransformersEngine(net, tok, template, max_batch_size=4)
    try:
        with BackgroundServer(create_app(engine, ServeSettings(model_name="vl", max_model_len=4096))) as server:
            client = OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
            content = [{"type": "image_url", "image_url": {"url": _data_uri(pictures["blue"])}},
                       {"type": "text", "text": "Colour?"}]
            r = client.chat.completions.create(model="vl", messages=[{"role": "user", "content": content}],
                                               max_tokens=5, temperature=0)
            ids, sources = vision.encode_prompt(template, _user(pictures["blue"], "Colour?"))
            direct = engine.generate([ids], SamplingParams(max_new_tokens=5), images=[vision.pixels(template, sources)])
            assert r.choices[0].message.content == template.parse_response(direct[0][0].text)["content"]
            assert r.usage.prompt_tokens == len(ids)
            for url, message in ((pictures["blue"], "a file path; send images as data: URIs"),
                                 ("data:image/png;base64,bm90IGFuIGltYWdl", "cannot be read")):
                bad = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Colour?"}]
                with pytest.raises(openai.BadRequestError, match=message):
                    client.chat.completions.create(model="vl", messages=[{"role": "user", "content": bad}],
                                                   max_tokens=2)
    finally:
        engine.close()


def test_a_public_url_cannot_redirect_the_server_into_its_own_network(monkeypatch):
    """Every connection of a public-only fetch is checked, redirects' too: the first check alone let a public
    URL answer with a 302 to an address inside the network, which was then fetched. (127.0.0.2 plays the public
    host: every 127/8 address reaches this machine.)"""
    import http.server
    import ipaddress
    import threading

    from swiftlike.data import fetch

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/secret")
                self.end_headers()
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"INTERNAL-ONLY")

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    real = ipaddress.ip_address
    monkeypatch.setattr(fetch.ipaddress, "ip_address", lambda a: ipaddress.IPv4Address("93.184.216.34")
                        if str(a) == "127.0.0.2" else real(a))
    port = server.server_address[1]
    try:
        fetch.download.cache_clear()
        assert fetch.download(f"http://127.0.0.2:{port}/secret") == b"INTERNAL-ONLY"  # (not refused without it)
        with fetch.public_only():
            assert fetch.download(f"http://127.0.0.2:{port}/secret") == b"INTERNAL-ONLY"  # the "public" host
            with pytest.raises(fetch.FetchError, match=r"127.0.0.1 is a non-public address"):
                fetch.download(f"http://127.0.0.2:{port}/redirect")
            with pytest.raises(fetch.FetchError, match=r"localhost is a non-public address"):
                fetch.download(f"http://localhost:{port}/secret")
    finally:
        server.shutdown()
        fetch.download.cache_clear()


def test_an_image_url_is_downloaded_once_per_prompt(pictures, qwen3_tokenizer):
    from pathlib import Path

    from swiftlike.data.fetch import public_only
    from swiftlike.data.images import ImageProcessing
    from swiftlike.registry import find_model
    from swiftlike.templates import get_template

    with file_server(Path(pictures["red"]).parent) as (base, served):
        template = get_template("qwen2_vl", qwen3_tokenizer)
        template.image_processing = ImageProcessing(dict(find_model(MODELS[0]).processor))
        url = f"{base}/blue.png"
        # a server's client may not make it fetch from its own network (127.0.0.1 here) unless allowed
        with public_only(), pytest.raises(UserError, match=r"blue.png: cannot be read \(127.0.0.1 is a non-public "):
            vision.encode_prompt(template, _user(url, "Colour?"), files=False)
        assert served == []
        ids, sources = vision.encode_prompt(template, _user(url, "Colour?"), files=False)
        local, _ = vision.encode_prompt(template, _user(pictures["blue"], "Colour?"))
        assert ids == local and sources.images == [url]
        assert torch.equal(vision.pixels(template, sources)["pixel_values"],
                           vision.pixels(template, vision.Media([pictures["blue"]]))["pixel_values"])
        assert served == ["/blue.png"]
        with pytest.raises(UserError, match=r"image http://.*/gone.png: cannot be read \(HTTP Error 404"):
            vision.encode_prompt(template, _user(url.replace("blue", "gone"), "Colour?"))
        # a URL larger than the download cap is refused, not read without end (a server's client sends URLs)
        from swiftlike.data import fetch

        fetch.download.cache_clear()
        cap = fetch.MAX_DOWNLOAD
        fetch.MAX_DOWNLOAD = Path(pictures["blue"]).stat().st_size - 1
        try:
            with pytest.raises(UserError, match=r"blue.png: larger than"):
                vision.encode_prompt(template, _user(url, "Colour?"))
        finally:
            fetch.MAX_DOWNLOAD = cap
            fetch.download.cache_clear()
