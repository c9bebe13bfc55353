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


def test_the_cli_refuses_liger_on_a_cpu_run_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WB_DEVICE", "cpu")  # a CPU run, also on a machine with a GPU
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
    monkeypatch.setattr(kernels, "choose", lambda *_: (True, "CUDA, liger-kernel installed"))
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
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_liger_kernels_compute_the_loss_and_gradients_of_the_model_without_them(model_id, dtype):
    pytest.importorskip("liger_kernel")
    from swiftlike.data.collate import collate_padding_free
    from swiftlike.models.loader import build_miniature
    from test_attention import _loss_and_grads, _rows, assert_matches

    plain = build_miniature(model_id, dtype=dtype).cuda()
    fused, exact = copy.deepcopy(plain), copy.deepcopy(plain).float()
    batch = {k: v.cuda() for k, v in collate_padding_free(_rows(plain.config.vocab_size, (70, 300, 33, 129))).items()}
    family = sys.modules[type(plain).__module__]
    saved = dict(vars(family))
    rope = _transformers_rope(family)  # an earlier CUDA training in this process leaves Liger's on CUDA
    try:
        a = _loss_and_grads(plain, batch)
        e = None if dtype == torch.float32 else _loss_and_grads(exact, batch)
        kernels.apply(fused)
        assert fused.model.norm._get_name() == "LigerRMSNorm"
        assert family.apply_rotary_pos_emb._wb_original is rope  # Liger's RoPE on CUDA
        b = _loss_and_grads(fused, batch)
    finally:  # the family as it was before this test
        for key, value in saved.items():
            setattr(family, key, value)
    assert_matches(a, b, e)


def test_the_family_is_left_as_it_was_but_for_a_rotary_function_that_runs_liger_on_cuda_only(monkeypatch):
    """Liger replaces the family's classes and rotary function for the whole process; after `apply` only the patched
    instance keeps Liger's modules, and the rotary function runs Liger's kernel for CUDA tensors only, so a model of
    the same family built or run later on the CPU computes as transformers' own (Triton cannot take CPU tensors)."""
    from types import SimpleNamespace

    from swiftlike.models.loader import build_miniature

    model = build_miniature("Qwen/Qwen3-0.6B")
    family = sys.modules[type(model).__module__]
    saved = dict(vars(family))
    original_rope, original_norm = _transformers_rope(family), family.Qwen3RMSNorm
    calls = []

    def fused_rope(q, k, *args, **kwargs):
        if not q.is_cuda:
            raise ValueError("Pointer argument (at 0) cannot be accessed from Triton (cpu tensor?)")
        calls.append("fused")
        return "fused result"

    def patch(model, parts):
        family.apply_rotary_pos_emb, family.Qwen3RMSNorm = fused_rope, type("LigerRMSNorm", (torch.nn.Module,), {})
        model.model.norm.patched_by_liger = True

    _fake_liger(monkeypatch, patch)
    try:
        for _ in range(2):  # a second model of the run (a frozen reference) is patched the same way
            assert kernels.apply(model) is None
            assert family.Qwen3RMSNorm is original_norm and model.model.norm.patched_by_liger
            assert family.apply_rotary_pos_emb is not original_rope
            assert family.apply_rotary_pos_emb._wb_original is original_rope
        cuda_tensor = SimpleNamespace(is_cuda=True)
        assert family.apply_rotary_pos_emb(cuda_tensor, cuda_tensor, None, None) == "fused result" and calls
        later = build_miniature("Qwen/Qwen3-0.6B")
        plain = copy.deepcopy(later)
        ids = torch.tensor([[5, 6, 7, 8]])
        with_dispatch = later(input_ids=ids).logits
        family.apply_rotary_pos_emb = original_rope
        torch.testing.assert_close(with_dispatch, plain(input_ids=ids).logits, rtol=0, atol=0)
    finally:
        for key, value in saved.items():
            setattr(family, key, value)


def _transformers_rope(family):
    """The family's own RoPE function, set back in place of a dispatcher an earlier run in this process left."""
    rope = getattr(family.apply_rotary_pos_emb, "_wb_original", family.apply_rotary_pos_emb)
    family.apply_rotary_pos_emb = rope
    return rope


def test_unfused_runs_transformers_own_modules_inside_and_puts_liger_back_after(monkeypatch):
    """A rollout's decode step that torch.compile compiles runs without Liger's kernels, which it cannot analyse:
    inside `unfused` the patched instances compute with their classes' forwards and the rotary dispatch with
    transformers' function; afterwards Liger's are back. GRPO's static-cache rollout decodes inside it on
    torch.compile's route (tests/test_rollout.py: the other routes keep Liger's kernels)."""
    from types import MethodType, SimpleNamespace

    from swiftlike.models.loader import build_miniature
    from swiftlike.rollout import Sampling
    from swiftlike.rollout.hf import HFRollout

    model = build_miniature("Qwen/Qwen3-0.6B")
    plain = copy.deepcopy(model)
    family = sys.modules[type(model).__module__]
    saved = dict(vars(family))
    rope = _transformers_rope(family)

    def triton_only(self, *args, **kwargs):
        raise RuntimeError("a Liger kernel ran")

    def patch(model, parts):  # what liger-kernel does: forwards bound to the instances, the family's RoPE replaced
        for m in model.modules():
            if type(m).__name__ in ("Qwen3RMSNorm", "Qwen3MLP"):
                m.forward = MethodType(triton_only, m)
        family.apply_rotary_pos_emb = lambda *a, **k: "fused"

    _fake_liger(monkeypatch, patch)
    try:
        assert kernels.apply(model) is None
        ids = torch.tensor([[5, 6, 7, 8]])
        with pytest.raises(RuntimeError, match="a Liger kernel ran"):
            model(input_ids=ids)
        cuda_tensor = SimpleNamespace(is_cuda=True)
        assert family.apply_rotary_pos_emb(cuda_tensor, cuda_tensor, None, None) == "fused"
        with kernels.unfused(model):
            model_logits = model(input_ids=ids).logits
            torch.testing.assert_close(model_logits, plain(input_ids=ids).logits, rtol=0, atol=0)
            assert family.apply_rotary_pos_emb._wb_original is rope
            with pytest.raises(AttributeError):  # transformers' own RoPE got the stand-in: not Liger's
                family.apply_rotary_pos_emb(cuda_tensor, cuda_tensor, None, None)
        with pytest.raises(RuntimeError, match="a Liger kernel ran"):
            model(input_ids=ids)
        assert family.apply_rotary_pos_emb(cuda_tensor, cuda_tensor, None, None) == "fused"
        with kernels.unfused(plain):  # a model `apply` never patched computes as before
            torch.testing.assert_close(plain(input_ids=ids).logits, model_logits, rtol=0, atol=0)
        sampling, prompts = Sampling(max_tokens=5, temperature=1.0, seed=0), [[100, 200, 300], [400, 500]]
        compiled = HFRollout(model, 0, static_cache=True, decode=dict(backend="eager"))  # (torch.compile's route)
        assert compiled.generate(prompts, 2, sampling) == HFRollout(plain, 0, static_cache=True).generate(
            prompts, 2, sampling)
        with pytest.raises(RuntimeError, match="a Liger kernel ran"):
            model(input_ids=ids)
    finally:
        for key, value in saved.items():
            setattr(family, key, value)
