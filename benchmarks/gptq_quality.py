"""GPTQ quality: `wb export --quant_method gptq`'s rounding (export/gptq.py) vs llm-compressor's GPTQ, same model,
calibration rows and scheme (int4, symmetric, groups of 128, 1% damping, blocks of 128, no activation ordering).

    python benchmarks/gptq_quality.py --peer_python /path/to/venv/bin/python [--rows 32]

llm-compressor 0.14 pins transformers <= 5.17, so it runs in its own environment, e.g.
`python -m venv --system-site-packages /tmp/llmc && /tmp/llmc/bin/pip install llmcompressor==0.14.0.1
transformers==5.17.0`. Reported per linear layer and on average: the error each quantized weight makes on the
layer's outputs for the calibration inputs (of the unquantized model), as a fraction of rounding to nearest on the
same grid; and the share of integer codes both choose. Needs `pip install -e ".[quant]"`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_model_dir, scratch_dir  # noqa: E402

GROUP = 128
PEER = '''
import json, sys, torch
from datasets import Dataset
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmcompressor import oneshot
from llmcompressor.modifiers.gptq import GPTQModifier
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

model_dir, rows_file, group, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
rows = json.load(open(rows_file))
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
data = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
args = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=group)
recipe = GPTQModifier(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=args)},
                      ignore=["lm_head"], block_size=128, dampening_frac=0.01, actorder=None)
oneshot(model=model, dataset=data, recipe=recipe, num_calibration_samples=len(rows), shuffle_calibration_samples=False,
        max_seq_length=4096, pipeline="sequential", tokenizer=AutoTokenizer.from_pretrained(model_dir))
save_file({f"{n}.weight": m.weight.detach().float().contiguous() for n, m in model.named_modules()
           if hasattr(m, "weight_scale")} | {f"{n}.weight_scale": m.weight_scale.detach().float().contiguous()
                                              for n, m in model.named_modules() if hasattr(m, "weight_scale")}, out)
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer_python", required=True, help="a Python with llm-compressor installed")
    ap.add_argument("--rows", type=int, default=32, help="calibration rows of the shipped GSM8K test slice")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()

    import torch
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.utils import calculate_qparams, calculate_range
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swiftlike.data.dataset import encode_rows, load_rows
    from swiftlike.export import gptq
    from swiftlike.templates import get_template

    work = scratch_dir("gptq_quality")
    model_dir = build_model_dir(work / "model", hidden=args.hidden, layers=args.layers)
    template = get_template("qwen3", AutoTokenizer.from_pretrained(model_dir))
    encoded, _ = encode_rows(load_rows([f"gsm8k-test#{args.rows}"]), template, 1024, truncation_strategy="right")
    rows = [r["input_ids"] for r in encoded]
    (work / "rows.json").write_text(json.dumps(rows))
    (work / "peer.py").write_text(PEER)
    subprocess.run([args.peer_python, str(work / "peer.py"), str(model_dir), str(work / "rows.json"), str(GROUP),
                    str(work / "peer.safetensors")], check=True, stdout=subprocess.DEVNULL)
    peer = load_file(str(work / "peer.safetensors"))

    qargs = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=GROUP)
    lo, hi = (int(b) for b in calculate_range(qargs, "cpu"))
    scale_of = lambda mn, mx: calculate_qparams(mn, mx, qargs)[0]  # noqa: E731
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    inputs: dict[str, list] = {}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: inputs.setdefault(n, []).append(a[0].flatten(0, -2)))
             for n, m in reference.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    with torch.no_grad():
        for ids in rows:
            reference(input_ids=torch.tensor([ids]))
    for h in hooks:
        h.remove()
    ours = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    scales = gptq.quantize_model(ours, rows, lo, hi, GROUP, scale_of)

    def grid(w, s):
        return (w.reshape(w.shape[0], -1, GROUP) / s[..., None]).round()

    results, same, total = {}, 0, 0
    for name, xs in inputs.items():
        x, w = torch.cat(xs), reference.get_submodule(name).weight.detach()
        groups = w.reshape(w.shape[0], -1, GROUP)
        s = scale_of(groups.amin(-1), groups.amax(-1))[..., None]
        rtn = (torch.clamp(torch.round(groups / s), lo, hi) * s).reshape(w.shape)
        error = lambda q: float(((x @ (q - w).T) ** 2).mean())  # noqa: E731
        ours_w, peer_w = ours.get_submodule(name).weight.detach(), peer[f"{name}.weight"]
        codes = grid(ours_w, scales[name]) == grid(peer_w, peer[f"{name}.weight_scale"])
        same, total = same + int(codes.sum()), total + codes.numel()
        results[name] = {"ours_vs_rtn": error(ours_w) / error(rtn), "llmcompressor_vs_rtn": error(peer_w) / error(rtn)}
        print(f"{name:36s} output error / round-to-nearest: ours {results[name]['ours_vs_rtn']:.3f}, "
              f"llm-compressor {results[name]['llmcompressor_vs_rtn']:.3f}")
    mean = {k: sum(r[k] for r in results.values()) / len(results) for k in ("ours_vs_rtn", "llmcompressor_vs_rtn")}
    print(json.dumps({"layers": len(results), "rows": len(rows), "tokens": sum(map(len, rows)), **mean,
                      "same_codes": same / total}, indent=1))


if __name__ == "__main__":
    main()
