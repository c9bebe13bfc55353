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


def test_quantization_method_checks():
    from swiftlike.errors import UserError
    from swiftlike.export.quantize import check_method

    for method, library in (("gptq", "gptqmodel"), ("awq", "llm-compressor"), ("fp8", "llm-compressor")):
        with pytest.raises(UserError, match=f"--quant_method {method} is not available .*{library}"):
            check_method(method, 4)


def test_a_missing_quantization_library_is_named(monkeypatch):
    from swiftlike.errors import UserError
    from swiftlike.export.quantize import check_method

    monkeypatch.setitem(__import__("sys").modules, "torchao", None)
    with pytest.raises(UserError, match=r"--quant_method torchao needs torchao: pip install 'swiftlike\[quant\]'"):
        check_method("torchao", 8)
