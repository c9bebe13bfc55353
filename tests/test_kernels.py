"""Liger's fused kernels (models/kernels.py): the choice follows the flag, the device, the package and the model
type, with one-line refusals where the flag asks for what cannot run; on a CUDA GPU (GPU-marked tests, skipped
without one) a model with Liger's RMSNorm, SwiGLU and RoPE computes the loss and gradients of the model without
them, padding-free, through the same trainer loss."""
import copy
import importlib.util
import sys

import pytest
import torch

from swiftlike.cli.main import main
from swiftlike.errors import UserError
from swiftlike.models import kernels


@pytest.fixture
def liger_installed(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "liger_kernel"
                        else real(name, *a))
    monkeypatch.setattr(kernels, "supported", lambda: {"qwen3", "llama"})


@pytest.fixture
def liger_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel"
                        else real(name, *a))


def test_off_by_default_where_liger_does_not_run_and_when_turned_off(liger_installed):
    assert kernels.choose(None, "cpu", "qwen3") == (False, None)
    assert kernels.choose(None, "npu", "qwen3") == (False, None)
    assert kernels.choose(False, "cuda", "qwen3") == (False, "--use_liger_kernel false")


def test_on_by_default_on_cuda_when_installed_for_a_covered_model(liger_installed):
    assert kernels.choose(None, "cuda", "qwen3") == (True, "CUDA, liger-kernel installed")
    assert kernels.choose(True, "cuda", "llama") == (True, "--use_liger_kernel")
    assert kernels.choose(None, "cuda", "minicpm") == (False, "liger-kernel has no kernels for minicpm")


def test_the_default_says_what_is_missing_on_cuda(liger_missing):
    use, why = kernels.choose(None, "cuda", "qwen3")
    assert not use and why == "liger-kernel is not installed (pip install 'swiftlike[cuda]')"


def test_asking_for_what_cannot_run_is_one_line(liger_installed, monkeypatch):
    with pytest.raises(UserError, match="Liger's Triton kernels run on CUDA GPUs, and this run is on cpu"):
        kernels.choose(True, "cpu", "qwen3")
    with pytest.raises(UserError, match="no kernels for model type 'minicpm'"):
        kernels.choose(True, "cuda", "minicpm")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(UserError, match=r"needs liger-kernel: pip install 'swiftlike\[cuda\]'"):
        kernels.choose(True, "cuda", "qwen3")


def test_the_cli_refuses_liger_on_a_cpu_run_before_training(tmp_path, capsys):
    code = main(["sft", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--dataset", "examples/data/identity.jsonl",
                 "--lora", "--max_steps", "1", "--use_liger_kernel", "true", "--output_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "--use_liger_kernel: Liger's Triton kernels run on CUDA GPUs" in err
    assert "Traceback" not in err and not list((tmp_path / "run").glob("checkpoint-*"))


def _fake_liger(monkeypatch, patch):
    """A liger_kernel whose instance patch is `patch(model)` (the real one needs Triton and a GPU)."""
    import types

    package, sub = types.ModuleType("liger_kernel"), types.ModuleType("liger_kernel.transformers")
    sub._apply_liger_kernel_to_instance = lambda model, **parts: patch(model, parts)
    monkeypatch.setitem(sys.modules, "liger_kernel", package)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", sub)


def test_a_liger_release_that_cannot_patch_the_model_leaves_it_as_it_was(monkeypatch, capsys):
    """liger-kernel 0.8.5 imports classes transformers 5.24 lacks for Qwen2.5-VL: the default falls back to
    transformers' modules (family restored, one line says why); an explicit --use_liger_kernel is a one-line error."""
    from swiftlike.config import SFTConfig, build_config
    from swiftlike.models.loader import build_miniature
    from swiftlike.pipelines.sft import training_kernels

    model = build_miniature("Qwen/Qwen3-0.6B")
    family = sys.modules[type(model).__module__]
    original = family.apply_rotary_pos_emb
    seen = []

    def half_patch(model, parts):
        seen.append(parts)
        family.apply_rotary_pos_emb = "patched"  # then fails, as an import inside liger-kernel would
        raise ImportError("cannot import name 'LigerQwen3CausalLMOutputWithPast'")

    _fake_liger(monkeypatch, half_patch)
    monkeypatch.setattr(kernels, "choose", lambda requested, device, model_type: (True, "CUDA, liger-kernel installed"))
    cfg = build_config(SFTConfig, {"model": "Qwen/Qwen3-0.6B", "dataset": ["x.jsonl"]})
    training_kernels(cfg, model, announce=True)
    assert family.apply_rotary_pos_emb is original
    assert seen == [{"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
                     "fused_linear_cross_entropy": False}]  # never the loss: ours stays
    out = capsys.readouterr().out
    assert "[wb] kernels: transformers own (liger-kernel cannot patch qwen3: ImportError: cannot import name" in out
    cfg.use_liger_kernel = True
    with pytest.raises(UserError, match=r"--use_liger_kernel: liger-kernel cannot patch qwen3 \(ImportError"):
        training_kernels(cfg, model)
    assert family.apply_rotary_pos_emb is original


@pytest.mark.gpu
@pytest.mark.parametrize("model_id", ["Qwen/Qwen3-0.6B", "meta-llama/Llama-3.2-1B-Instruct"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_liger_kernels_compute_the_loss_and_gradients_of_the_model_without_them(model_id, dtype, tol):
    pytest.importorskip("liger_kernel")
    from swiftlike.data.collate import collate_padding_free
    from swiftlike.models.loader import build_miniature
    from test_attention import _loss_and_grads, _rows

    plain = build_miniature(model_id, dtype=dtype).cuda()
    fused = copy.deepcopy(plain)
    batch = {k: v.cuda() for k, v in collate_padding_free(_rows(plain.config.vocab_size, (70, 300, 33, 129))).items()}
    a_loss, a_n, a_grads = _loss_and_grads(plain, batch)  # first: Liger's RoPE replaces the family's function
    family = sys.modules[type(plain).__module__]
    saved = dict(vars(family))
    try:
        kernels.apply(fused)
        assert fused.model.norm._get_name() == "LigerRMSNorm" and family.apply_rotary_pos_emb is not saved[
            "apply_rotary_pos_emb"]
        b_loss, b_n, b_grads = _loss_and_grads(fused, batch)
    finally:  # the rest of the suite builds these models without Liger
        for key, value in saved.items():
            setattr(family, key, value)
    assert a_n == b_n and b_loss == pytest.approx(a_loss, rel=tol)
    assert a_grads.keys() == b_grads.keys()
    for name, grad in a_grads.items():
        torch.testing.assert_close(b_grads[name].float(), grad.float(), rtol=tol, atol=tol, msg=name)
