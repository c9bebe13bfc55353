"""Fused training kernels on CUDA, decided in one place: Liger Kernel's RMSNorm, SwiGLU MLP and RoPE (Triton).

`choose` decides from `--use_liger_kernel` (true requires them, false turns them off) and, by default, turns them
on for training on CUDA when the liger-kernel package is installed (`pip install 'swiftlike[cuda]'`) and covers the
model type; on every other device the model is left as transformers builds it. Liger's cross-entropy and fused
linear cross-entropy are not applied: the trainer's loss is our own chunked linear cross-entropy (train/loss.py),
which never materializes the logits either and computes the label-masked sums every loss here needs.

`apply` patches a loaded model instance (before LoRA adapters are attached, so PEFT wraps the same linear layers):
its RMSNorm and MLP modules' forwards, and the rotary embedding. Liger itself also replaces, in transformers' module
of that model family, the RMSNorm / MLP classes and the rotary embedding function, for every model of the family
the process builds or runs later — on the CPU too, where Triton cannot run (a notebook that trains on the GPU and
then evaluates on the CPU would fail). So the family module is put back as it was, except that its rotary function
becomes one that runs Liger's kernel for CUDA tensors and transformers' own for any other.

`unfused(model)` puts transformers' own forwards back for a while: a rollout's decode step over the static cache
(infer/static_cache.py) when torch.compile compiles it. torch.compile cannot analyse Liger's Triton kernels
(liger-kernel 0.8.5, torch 2.11), so it breaks the graph around them and assumes they write to their inputs — the
norms' weights among them — and then records no CUDA graph at all (seen on an H100, 2026-11-26). The step captured
directly as a CUDA graph (the default) keeps Liger's kernels: a Triton launch is captured like any other, and a fused
norm or RoPE is one kernel where transformers' are 7 to 10 (a graph replay of a 0.6B decode step was bound by its
~2,550 kernels a token on an H100).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import sys

from ..errors import UserError

# what Liger replaces: the norms, the gated MLP and RoPE; never the loss (see above)
PARTS = dict(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)
INSTALL = "pip install 'swiftlike[cuda]'"


def choose(requested: bool | None, device_type: str, model_type: str,
           compiled: bool = False) -> tuple[bool, str | None]:
    """(whether Liger's kernels are applied; why, for the start-up line — None where there is nothing to say:
    off by default on a device Liger does not run on). With `compiled` layers (--torch_compile) they are off unless
    requested: inductor fuses the same operations (models/compiled.py)."""
    if requested is False:
        return False, "--use_liger_kernel false"
    installed = importlib.util.find_spec("liger_kernel") is not None
    if requested:
        if device_type != "cuda":
            raise UserError(f"--use_liger_kernel: Liger's Triton kernels run on CUDA GPUs, and this run is on "
                            f"{device_type}; drop the flag")
        if not installed:
            raise UserError(f"--use_liger_kernel needs liger-kernel: {INSTALL}")
        if model_type not in supported():
            raise UserError(f"--use_liger_kernel: liger-kernel has no kernels for model type {model_type!r}; drop "
                            "the flag")
        return True, "--use_liger_kernel"
    if device_type != "cuda":
        return False, None
    if compiled:
        return False, "--torch_compile: inductor fuses the norms, MLPs and RoPE"
    if not installed:
        return False, f"liger-kernel is not installed ({INSTALL})"
    if model_type not in supported():
        return False, f"liger-kernel has no kernels for {model_type}"
    return True, "CUDA, liger-kernel installed"


def supported() -> set[str]:
    """The model types liger-kernel patches (its own table)."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return set(MODEL_TYPE_TO_APPLY_LIGER_FN)


def apply(model) -> str | None:
    """Liger's RMSNorm, SwiGLU and RoPE on this loaded model (see the module's docstring). Where liger-kernel cannot
    patch it (a release that does not fit the installed transformers: liger-kernel 0.8.5 imports classes
    transformers 5.24 lacks for Qwen2.5-VL / Qwen3-VL), the model's family module is restored and the reason
    returned; None when patched."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    family = sys.modules[type(model).__module__]
    saved = dict(vars(family))
    before = {id(m): vars(m).get("forward") for m in model.modules()}
    try:
        _apply_liger_kernel_to_instance(model=model, **PARTS)
    except Exception as e:  # liger-kernel fails before patching the instance (its imports come first)
        _restore(family, saved)
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    for m in model.modules():  # Liger binds its forwards to the instances (`unfused` takes them off for a while)
        if vars(m).get("forward") is not before.get(id(m)):
            m._wb_fused_forward = vars(m)["forward"]
    replaced = {key: value for key, value in vars(family).items() if saved.get(key, value) is not value}
    _restore(family, saved)
    for key, value in replaced.items():
        if inspect.isfunction(value) and inspect.isfunction(saved[key]):  # the rotary embedding
            setattr(family, key, _on_cuda_only(value, saved[key]))
    return None


@contextlib.contextmanager
def unfused(model):
    """Inside, the model computes with transformers' own modules and RoPE (see the module's docstring); Liger's
    are back afterwards."""
    patched = [m for m in model.modules()
               if "_wb_fused_forward" in vars(m) and vars(m).get("forward") is vars(m)["_wb_fused_forward"]]
    for m in patched:
        del m.forward  # the instance's binding: the class's own forward shows through
    _FUSED_ROPE[0] = False
    try:
        yield
    finally:
        _FUSED_ROPE[0] = True
        for m in patched:
            m.forward = m._wb_fused_forward


_FUSED_ROPE = [True]  # False inside `unfused`: the rotary dispatch below runs transformers' function


def _restore(family, saved: dict) -> None:
    for key, value in saved.items():
        setattr(family, key, value)


def _on_cuda_only(fused, original):
    """`fused` (a Triton kernel) for CUDA tensors, `original` for any other (the first argument decides)."""
    if getattr(original, "_wb_original", None) is not None:  # patched before: dispatch from the first original
        original = original._wb_original

    @functools.wraps(original)
    def dispatch(first, *args, **kwargs):
        return (fused if first.is_cuda and _FUSED_ROPE[0] else original)(first, *args, **kwargs)

    dispatch._wb_original = original
    return dispatch
