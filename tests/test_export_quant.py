"""`wb export --quant_method`: quantized weights that plain transformers reloads, with the perplexity of the
reloaded export next to the unquantized model's in the model card; refusals before any work is done."""
import json

import pytest
import torch

import swiftlike as wb
from swiftlike.cli.main import main
from swiftlike.models.perplexity import perplexity
from swiftlike.models.resolve import load_for_inference

PROMPT = [{"role": "user", "content": "Who are you?"}]
# method, bits, the weight type transformers reloads, the least cosine similarity of its logits to the
# unquantized model's (a random miniature is a hard case for 4 bits: 0.89 measured for both methods)
QUANT = [("bnb", 4, "Params4bit", 0.8), ("bnb", 8, "Int8Params", 0.99),
         ("torchao", 4, "IntxUnpackedToInt8Tensor", 0.8), ("torchao", 8, "Int8Tensor", 0.99)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    run = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["examples/data/identity.jsonl"], lora=True,
                 max_steps=5, output_dir=str(tmp_path_factory.mktemp("quant") / "run"))
    return run.checkpoint


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


@pytest.mark.slow
@pytest.mark.parametrize("method, bits, weight_type, bound", QUANT)
def test_quantized_export_reloads_and_reports_perplexity(ckpt, tmp_path, method, bits, weight_type, bound):
    pytest.importorskip("bitsandbytes" if method == "bnb" else "torchao")
    from transformers import AutoModelForCausalLM

    from swiftlike.data.dataset import encode_rows, load_rows

    out = tmp_path / "q"
    assert main(["export", "--adapters", ckpt, "--merge", "--torch_dtype", "float32", "--output_dir", str(out),
                 "--quant_method", method, "--quant_bits", str(bits), "--dataset", "gsm8k-test#3"]) == 0
    assert not (out / ".unquantized").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == {"bnb": "bitsandbytes"}.get(method, method)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert type(reloaded.model.layers[0].mlp.down_proj.weight).__name__ == weight_type
    merged, _, template = load_for_inference(adapters=ckpt, torch_dtype="float32")
    ids = template.encode_prompt(PROMPT)
    a, b = _logits(reloaded, ids), _logits(merged, ids)
    similarity = torch.nn.functional.cosine_similarity(a, b, dim=-1).min()
    assert not torch.equal(a, b) and similarity > bound  # quantized, and close to the model it was quantized from
    report = json.loads((out / "args.json").read_text())["export"]["quantization"]
    encoded, _ = encode_rows(load_rows(["gsm8k-test#3"]), template, 1024, truncation_strategy="right")
    assert report["rows"] == 3 and report["calibration"] == "gsm8k-test#3"
    assert report["perplexity_unquantized"] == pytest.approx(perplexity(merged, encoded), rel=1e-4)
    assert report["perplexity_quantized"] == pytest.approx(perplexity(reloaded, encoded), rel=1e-4)
    card = (out / "README.md").read_text()
    assert "## Quantization" in card and f"| quantized | {report['perplexity_quantized']} |" in card


@pytest.mark.slow
def test_fp8_export_is_compressed_tensors_that_transformers_reloads(ckpt, tmp_path):
    """FP8 E4M3 weights with one scale per output channel, in the compressed-tensors layout vLLM serves: every
    projection stored in FP8 (the output head and embeddings not), decoding to the merged weights within E4M3's
    precision; transformers reloads it and computes close to the merged model; the report measures the reload."""
    pytest.importorskip("compressed_tensors")
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from swiftlike.data.dataset import encode_rows, load_rows

    out = tmp_path / "fp8"
    assert main(["export", "--adapters", ckpt, "--merge", "--torch_dtype", "bfloat16", "--output_dir", str(out),
                 "--quant_method", "fp8", "--dataset", "gsm8k-test#3"]) == 0  # --quant_bits: 8 for fp8
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "float-quantized"
    scheme = config["config_groups"]["group_0"]
    assert scheme["weights"] == {**scheme["weights"], "type": "float", "num_bits": 8, "strategy": "channel"}
    assert scheme["input_activations"]["dynamic"] and scheme["input_activations"]["strategy"] == "token"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    linear = [k for k in stored if k.endswith("_proj.weight")]
    assert len(linear) == 2 * 7 and all(stored[k].dtype == torch.float8_e4m3fn for k in linear)
    assert "lm_head.weight_scale" not in stored and stored["model.embed_tokens.weight"].dtype == torch.bfloat16
    adapted, _, template = load_for_inference(adapters=ckpt, torch_dtype="bfloat16")
    merged = adapted.merge_and_unload()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    name = "model.layers.1.mlp.down_proj"
    fp8, scale = stored[f"{name}.weight"], stored[f"{name}.weight_scale"]
    assert scale.shape == (fp8.shape[0], 1)
    original = merged.get_submodule(name).weight.float()
    assert torch.allclose(scale.float(), original.abs().amax(dim=1, keepdim=True) / 448, rtol=1e-2)
    layer = reloaded.get_submodule(name)  # transformers keeps it compressed, computing from these bytes
    assert torch.equal(layer.weight.view(torch.uint8), fp8.view(torch.uint8)) and torch.equal(layer.weight_scale, scale)
    decoded = fp8.float() * scale.float()
    assert (decoded - original).abs().max() <= original.abs().max() / 16  # E4M3: 3 mantissa bits
    ids = template.encode_prompt(PROMPT)
    a, b = _logits(reloaded, ids), _logits(merged, ids)
    # weights and (per token, at run time) activations in E4M3: 0.9895 measured on this random miniature
    assert not torch.equal(a, b) and torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.98
    report = json.loads((out / "args.json").read_text())["export"]["quantization"]
    assert report["method"] == "fp8" and report["bits"] == 8
    encoded, _ = encode_rows(load_rows(["gsm8k-test#3"]), template, 1024, truncation_strategy="right")
    assert report["perplexity_quantized"] == pytest.approx(perplexity(reloaded, encoded), rel=1e-3)
    assert "fp8 8-bit weights" in (out / "README.md").read_text()


def test_perplexity_is_the_models_own_loss_on_the_labelled_tokens():
    from swiftlike.models import build_miniature

    model = build_miniature("Qwen/Qwen3-0.6B")
    ids = list(range(100, 120))
    labels = [-100] * 8 + ids[8:]
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
    assert perplexity(model, [{"input_ids": ids, "labels": labels}]) == pytest.approx(float(loss.exp()), rel=1e-5)


def test_quantization_refusals_are_one_line(tmp_path, capsys, monkeypatch):
    no_ckpt = str(tmp_path / "nowhere")
    assert main(["export", "--model", no_ckpt, "--quant_method", "bnb", "--to", "gguf"]) == 2
    assert "a GGUF export quantizes with --gguf_type q8_0" in capsys.readouterr().err
    assert main(["export", "--model", no_ckpt, "--quant_bits", "6"]) == 2
    assert "quant_bits: 6 is not one of 4, 8" in capsys.readouterr().err


def test_quantization_choices_from_python(tmp_path):
    from swiftlike.config import ExportConfig, build_config
    from swiftlike.errors import UserError

    with pytest.raises(UserError, match="quant_bits: 6 is not one of 4, 8"):
        build_config(ExportConfig, {"model": "m", "quant_method": "bnb", "quant_bits": 6})
    assert build_config(ExportConfig, {"model": "m", "quant_method": "fp8"}).quant_bits == 8
    assert build_config(ExportConfig, {"model": "m", "quant_method": "bnb"}).quant_bits == 4


def test_quantization_method_checks():
    from swiftlike.errors import UserError
    from swiftlike.export.quantize import check_method

    for method, library in (("gptq", "gptqmodel"), ("awq", "llm-compressor")):
        with pytest.raises(UserError, match=f"--quant_method {method} is not available .*{library}"):
            check_method(method, 4)
    with pytest.raises(UserError, match=r"--quant_bits 4: fp8 writes 8 bits \(FP8 E4M3\)"):
        check_method("fp8", 4)


def test_a_missing_quantization_library_is_named(monkeypatch):
    from swiftlike.errors import UserError
    from swiftlike.export.quantize import check_method

    monkeypatch.setitem(__import__("sys").modules, "torchao", None)
    with pytest.raises(UserError, match=r"--quant_method torchao needs torchao: pip install 'swiftlike\[quant\]'"):
        check_method("torchao", 8)
    monkeypatch.setitem(__import__("sys").modules, "compressed_tensors", None)
    with pytest.raises(UserError, match=r"fp8 needs compressed-tensors: pip install 'swiftlike\[quant\]'"):
        check_method("fp8", 8)
