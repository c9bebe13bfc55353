"""Which attention kernel a training run uses, decided in one place, and the variable-length kernel for padding-free
batches.

A padding-free batch is one row of concatenated sequences whose borders are where `position_ids` restarts at 0.
sdpa and eager need a dense L x L block-diagonal mask for it (train/loss.packed_masks), which on a GPU costs memory
and turns off the fused kernels. `VARLEN` ("wb_varlen", registered with transformers' AttentionInterface) takes the
borders instead (computed once per forward by train/loss.py and handed to every layer, else read from
`position_ids`) and runs each sequence's causal attention without a mask: on CUDA through
torch's flash-attention based `torch.nn.attention.varlen.varlen_attn` (no extra package; bf16/fp16), else as one sdpa
call per sequence (exact, and the reference the CUDA kernel is tested against). Rows with padding (padded batches,
KV-cached generation in GRPO rollouts) fall back to sdpa with the usual mask, and attention that is not causal (a
vision tower's) is sdpa's as transformers would run it.

`choose` picks the implementation: the user's `--attn_implementation` always wins; padding-free or packed training
on CUDA gets flash-attention 2 when the flash_attn package is installed and the model is in bf16/fp16, else VARLEN
(torch's varlen_attn in bf16/fp16; in fp32, which flash-attention kernels do not take, one sdpa call per sequence,
as on the CPU); on CPU it gets VARLEN too (one sdpa call per sequence costs the sum of the squared lengths instead
of the squared row length: measured 1.16x faster than the block mask for 512-token rows, 1.6-1.9x at 2,048,
1.7-3.5x at 4,096-8,192, keeping less for backward, by benchmarks/attention_cpu.py); models whose attention needs
more than a causal mask per sequence (sliding windows, logit soft-capping) and every other case (padded batches,
MPS, XPU, NPU in fp32) keep transformers' default (sdpa, with the block mask for padding-free rows). On an Ascend NPU
in bf16/fp16 padding-free training gets "flash_attention_2", which transformers runs there with torch_npu's fused
variable-length kernel (`npu_fusion_attention`, TND layout, the borders as cumulative lengths): no package beyond
torch-npu, no L x L mask.
"""
from __future__ import annotations

import functools
import importlib.util
import inspect

import torch

VARLEN = "wb_varlen"


def fused_varlen_runs(device_type: str, dtype: torch.dtype | str) -> bool:
    """Whether VARLEN runs torch's varlen_attn (flash-attention, fp16/bf16 only) on this device in this dtype (a
    torch dtype or its name); else one sdpa call per sequence."""
    return device_type == "cuda" and _half(dtype)


def _half(dtype: torch.dtype | str) -> bool:
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    return name in ("float16", "bfloat16")


def choose(requested: str | None, device_type: str, padding_free: bool, config,
           dtype: torch.dtype = torch.bfloat16) -> tuple[str | None, str]:
    """(the attn_implementation to load the model with, None for transformers' default; why, for the start-up
    line). `dtype`: the model's (flash-attention 2 takes fp16/bf16 only)."""
    if requested:
        return requested, "--attn_implementation"
    if not padding_free:
        return None, "padded batches: transformers' default (sdpa)"
    if needs_more_than_causal(config):
        return None, "padding-free, but this model's sliding windows / soft-capping need the mask: sdpa"
    if device_type == "cpu":
        return VARLEN, "padding-free on cpu: one causal sdpa call per sequence, no L x L mask"
    if device_type == "npu" and _half(dtype):  # transformers' flash_attention_2 runs torch_npu's kernel there
        return "flash_attention_2", ("padding-free on npu: torch_npu's fused varlen attention (npu_fusion_attention) "
                                     "through transformers' flash_attention_2")
    if device_type != "cuda":
        return None, f"padding-free on {device_type}: sdpa with a block-diagonal mask"
    if not fused_varlen_runs(device_type, dtype):
        return VARLEN, "padding-free on CUDA in fp32 (flash-attention takes bf16/fp16): one sdpa call per sequence"
    if importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2", "padding-free on CUDA: flash-attention 2 (flash_attn installed)"
    return VARLEN, "padding-free on CUDA: torch varlen_attn (flash-attention), no L x L mask"


def needs_more_than_causal(config) -> bool:
    """Whether a model's attention is more than causal within a sequence (sliding windows, soft-capping)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None) and (
        "sliding_attention" in (getattr(text, "layer_types", None) or ()) or getattr(text, "use_sliding_window", True))
    return bool(window or getattr(text, "attn_logit_softcapping", None))


def register() -> None:
    """Make VARLEN a name transformers' models accept as attn_implementation (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    AttentionInterface.register(VARLEN, varlen_attention)
    # like flash-attention: no mask for rows without padding (borders come from position_ids), the 2-D padding
    # mask otherwise
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN, flash_attention_mask)


def varlen_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     position_ids=None, **kwargs):
    """transformers' attention-function protocol: query (batch, heads, q, dim), key/value (batch, kv_heads, k, dim)
    -> ((batch, q, heads, dim), None). Attention that is not causal (a vision tower's) is sdpa's, as given."""
    if not kwargs.get("is_causal", getattr(module, "is_causal", True)):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    given = kwargs.get("cu_seq_lens_q")  # train/loss.py gives them once for every layer
    if given is not None and query.shape[0] == 1 and attention_mask is None and query.shape[2] == key.shape[2]:
        borders, longest = given, kwargs.get("max_length_q")
    else:
        borders, longest = _borders(position_ids, query, key, attention_mask), None
    if borders is None:
        return _padded(module, query, key, value, attention_mask, dropout, scaling)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, dim)
    out = _kernel(q, k, v, borders, scaling, dropout if module.training else 0.0, longest)
    return out.unsqueeze(0), None


def _borders(position_ids, query, key, attention_mask) -> torch.Tensor | None:
    """Cumulative sequence lengths (int32, starting at 0) of a single unpadded row without cache, else None."""
    if (position_ids is None or query.shape[0] != 1 or attention_mask is not None
            or query.shape[2] != key.shape[2] or position_ids.dim() != 2):
        return None
    starts = torch.nonzero(position_ids[0] == 0).flatten()
    if starts.numel() == 0 or int(starts[0]) != 0:
        return None
    length = torch.tensor([position_ids.shape[-1]], device=starts.device)
    return torch.cat([starts, length]).to(torch.int32)


def fused_varlen_fits(q, v, dropout: float) -> bool:
    """Whether torch's varlen_attn (flash-attention) takes these (tokens, heads, dim) tensors: on CUDA, fp16 or bf16
    only, no dropout, and a value head no wider than the query head (a narrower one, as multi-head latent attention
    has, is zero-padded to the query's width). Otherwise one sdpa call per sequence runs instead (fp32 training on a
    GPU: sdpa's own fp32 kernels)."""
    return (fused_varlen_runs("cuda" if q.is_cuda else "cpu", q.dtype) and dropout == 0.0
            and v.shape[-1] <= q.shape[-1])


def _kernel(q, k, v, borders, scale, dropout: float, longest: int | None = None):
    """Causal attention within each sequence of (tokens, heads, dim) tensors; `borders`: cumulative lengths,
    `longest`: the longest sequence where the caller knows it."""
    if fused_varlen_fits(q, v, dropout):
        from torch.nn.attention.varlen import varlen_attn

        if longest is None:
            longest = int((borders[1:] - borders[:-1]).max())
        width = v.shape[-1]
        if width < q.shape[-1]:  # the kernel takes one head size: zero columns of v add zero columns to the output
            v = torch.nn.functional.pad(v, (0, q.shape[-1] - width))
        return call_varlen(varlen_attn, q, k, v, borders, longest, scale)[..., :width]
    lengths = (borders[1:] - borders[:-1]).tolist()
    outs, start = [], 0
    for n in lengths:  # one causal sdpa call per sequence: exact, no mask
        # (1, heads, n, dim): torch's fused CPU kernel takes 4-D inputs only (3-D ones fall back to the math kernel,
        # which keeps every n x n attention matrix for backward and runs 2-3x slower)
        seq = [t[None, start:start + n].transpose(1, 2) for t in (q, k, v)]
        outs.append(torch.nn.functional.scaled_dot_product_attention(
            *seq, is_causal=True, scale=scale, dropout_p=dropout, enable_gqa=k.shape[1] != q.shape[1]
        )[0].transpose(0, 1))
        start += n
    return torch.cat(outs)


def call_varlen(varlen_attn, q, k, v, borders, longest: int, scale: float | None):
    """Causal varlen_attn over (tokens, heads, dim) tensors, in whichever keyword form this torch has: 2.9 takes
    `is_causal` (no scale), 2.10-2.11 `scale` and `window_size` (no grouped-query attention), 2.12+ `enable_gqa`.
    What a form lacks is done around it: the scale folded into q, k and v heads repeated for each query group."""
    params = _parameters(varlen_attn)
    kwargs = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if "scale" in params:
        kwargs["scale"] = scale
    elif scale is not None:  # the kernel scales by 1/sqrt(dim)
        q = q * (scale * q.shape[-1] ** 0.5)
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    return varlen_attn(q, k, v, borders, borders, longest, longest, **kwargs)


@functools.lru_cache(maxsize=8)
def _parameters(function) -> frozenset[str]:
    """The keyword names a function takes (read once: every layer of every step calls the kernel)."""
    return frozenset(inspect.signature(function).parameters)


def _padded(module, query, key, value, attention_mask, dropout: float, scaling):
    """sdpa over rows with a 2-D padding mask (or none), causal with the cache's offset."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len, k_len = query.shape[2], key.shape[2]
    allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, -k_len:].bool()
        allowed = allowed | ~allowed.any(-1, keepdim=True)  # a padding query attends somewhere (its output unused)
    return sdpa_attention_forward(module, query, key, value, allowed, dropout=dropout, scaling=scaling,
                                  is_causal=False)
