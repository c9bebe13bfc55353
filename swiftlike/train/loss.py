"""Causal-LM loss computed only where there is something to learn.

The model's decoder produces hidden states; full-vocabulary logits are formed only for positions
with a target, a chunk at a time. The gradient of each chunk is computed right away in forward
(softmax minus one-hot, times the output weight), so backward neither stores logits nor recomputes
them: with a 150k vocabulary the output layer dominates a small model's step, and this does its
work once (two matmuls per chunk, three with a trainable output layer).
"""
from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager

import torch
from torch import nn

from ..models.attention import VARLEN
from ..templates import IGNORE_INDEX

# ~134M logits (512 MB in fp32) a chunk: ~880 rows of Qwen3's 151,936-word vocabulary. Every chunk's matmuls read
# the whole output weight (twice: forward and the hidden states' gradient) and, when it is trained, read and write
# its whole fp32 gradient (vocab x hidden x 8 bytes, 1.2 GB for Qwen3-0.6B): with ~110 rows a chunk (2^24) a step of
# 8,192 tokens is 75 matmuls of M = 110, below what an H100 needs to be compute-bound (~250 rows), that read the
# 0.8 GB head of Qwen3-4B ~150 times (~35 ms a step, estimated) and at 0.6B full move 93 GB of gradient (~28 ms);
# 2^27 makes it 10 chunks. Measured on the 2-core CPU (a frozen head, 2,048 rows): 2^27 against 2^24 took 8.3 s
# against 12.2 s at width 1,024, 4.9 against 6.7 s at 256. On a GPU: benchmarks/gpu_check.sh chunk.
LOGITS_PER_CHUNK = 1 << 27


@contextmanager
def tensor_cores(source: torch.Tensor):
    """fp32 matmuls in TF32 inside when `source` (what is upcast to fp32 for them) is a 16-bit CUDA tensor: a
    trained output layer's fp32 weight gradient in bf16/fp16 training. On an H100 an IEEE fp32 GEMM runs at a tenth
    of bf16's rate, TF32 on the tensor cores at half of it, with fp32 accumulation and a 10-bit mantissa per product,
    more than a bf16 input holds (7) and as much as an fp16 one. fp32 training (which asked for fp32) and other
    devices keep IEEE fp32: on 2026-11-27 TF32 there put the fp32 CUDA tests' head gradients 1e-3 apart."""
    if not source.is_cuda or source.dtype not in (torch.bfloat16, torch.float16):
        yield
        return
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    matmul.fp32_precision = "tf32"
    try:
        yield
    finally:
        matmul.fp32_precision = saved


def _logits(h, weight, bias, softcap: float | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp32 logits of a chunk, soft-capped (cap * tanh(z / cap), Gemma-2) when the model does so, and
    d capped / d z (None without a cap)."""
    logits = (h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)).float()
    if not softcap:
        return logits, None
    t = torch.tanh(logits / softcap)
    return t * softcap, 1.0 - t * t


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T + bias, target_i), with gradients computed in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size: int, softcap: float | None = None):
        needs = ctx.needs_input_grad
        grad_hidden = torch.zeros_like(hidden) if needs[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs[1] else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and needs[2] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start:start + chunk_size]
            t = targets[start:start + chunk_size]
            logits, dcap = _logits(h, weight, bias, softcap)
            rows = torch.arange(t.shape[0], device=t.device)
            target_logit = logits[rows, t]
            peak = logits.amax(dim=-1)
            exp = logits.sub_(peak[:, None]).exp_()  # in place: one pass, no second exp for the softmax
            sum_exp = exp.sum(dim=-1)
            total += (sum_exp.log() + peak - target_logit).sum()
            if grad_hidden is None and grad_weight is None and grad_bias is None:
                continue
            grad = exp.div_(sum_exp[:, None])  # softmax
            grad[rows, t] -= 1.0
            if dcap is not None:
                grad.mul_(dcap)
            if grad_hidden is not None:
                grad_hidden[start:start + chunk_size] = (grad.to(weight.dtype) @ weight).to(hidden.dtype)
            if grad_weight is not None:  # accumulated in the matmul itself: no vocab x hidden temporary per chunk
                with tensor_cores(h):
                    grad_weight.addmm_(grad.T, h.float())
            if grad_bias is not None:
                grad_bias += grad.sum(0)
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_weight, grad_bias) if g is not None))
        ctx.has = (grad_hidden is not None, grad_weight is not None, grad_bias is not None)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        saved = iter(ctx.saved_tensors)
        gh = next(saved) * grad_output if ctx.has[0] else None
        gw = (next(saved) * grad_output).to(ctx.dtypes[0]) if ctx.has[1] else None
        gb = (next(saved) * grad_output).to(ctx.dtypes[1]) if ctx.has[2] else None
        return gh, gw, gb, None, None, None


def linear_cross_entropy(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                         chunk_size: int = 128, softcap: float | None = None) -> torch.Tensor:
    """Sum of token cross-entropies of `lm_head(hidden)` (soft-capped when `softcap`) against `targets` (rows
    already selected).

    Plain `nn.Linear` heads take the fused path; any other head (e.g. an adapter-wrapped one) falls
    back to chunks of the module's own forward under activation checkpointing.
    """
    if type(lm_head) is nn.Linear:
        return _LinearCrossEntropy.apply(hidden, lm_head.weight, lm_head.bias, targets, chunk_size, softcap)
    from torch.utils.checkpoint import checkpoint

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]
        total = total + checkpoint(_module_ce, lm_head, h, t, softcap, use_reentrant=False)
    return total


def _module_logits(lm_head: nn.Module, hidden: torch.Tensor, softcap: float | None) -> torch.Tensor:
    logits = lm_head(hidden).float()
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def _module_ce(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, softcap=None) -> torch.Tensor:
    return nn.functional.cross_entropy(_module_logits(lm_head, hidden, softcap), targets, reduction="sum")


class _LinearLogProbs(torch.autograd.Function):
    """log p(target_i) under a frozen linear head, with d log p / d hidden formed in forward.

    d log p(t) / d h = W[t] - softmax(h W^T) W: one [rows, hidden] matrix, so backward only scales it by the
    incoming gradient instead of recomputing the logits (a third of the output layer's work saved)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size: int, softcap: float | None = None,
                temperature: float = 1.0):
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, hidden.shape[0], chunk_size):
            h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]
            logits, dcap = _logits(h, weight, bias, softcap)
            if temperature != 1.0:
                logits = logits.div_(temperature)
            lse = torch.logsumexp(logits, dim=-1)
            out[start:start + chunk_size] = logits.gather(-1, t[:, None]).squeeze(-1) - lse
            if grad is not None:
                # d log p(t) / d z = (onehot(t) - softmax) / temperature, times d capped / d z under a soft cap
                dz = logits.sub_(lse[:, None]).exp_().neg_()
                dz[torch.arange(t.shape[0], device=t.device), t] += 1.0
                if dcap is not None:
                    dz.mul_(dcap)
                if temperature != 1.0:
                    dz.div_(temperature)
                grad[start:start + chunk_size] = (dz.to(weight.dtype) @ weight).to(hidden.dtype)
        if grad is not None:
            ctx.save_for_backward(grad)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output[:, None].to(grad.dtype), None, None, None, None, None, None


def _chunk_logps(lm_head, hidden: torch.Tensor, targets: torch.Tensor, softcap=None,
                 temperature: float = 1.0) -> torch.Tensor:
    logits = _module_logits(lm_head, hidden, softcap)
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_logps(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int,
                softcap: float | None = None, temperature: float = 1.0) -> torch.Tensor:
    """log p(target) per selected position, a chunk of logits at a time, never storing logits; with
    `temperature`, of the distribution sampled at it (log_softmax(logits / T), as TRL's GRPO computes it). A frozen
    plain linear head takes the fused path; a trainable or wrapped one recomputes each chunk in backward."""
    frozen = type(lm_head) is nn.Linear and not lm_head.weight.requires_grad and \
        (lm_head.bias is None or not lm_head.bias.requires_grad)
    if frozen:
        return _LinearLogProbs.apply(hidden, lm_head.weight, lm_head.bias, targets, chunk_size, softcap, temperature)
    from torch.utils.checkpoint import checkpoint

    parts = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]
        parts.append(checkpoint(_chunk_logps, lm_head, h, t, softcap, temperature, use_reentrant=False)
                     if torch.is_grad_enabled() else _chunk_logps(lm_head, h, t, softcap, temperature))
    return torch.cat(parts) if parts else hidden.new_zeros(0)


def packed_attention_mask(seq_lens: torch.Tensor, dtype: torch.dtype, boolean: bool,
                          window: int | None = None) -> torch.Tensor:
    """Block-diagonal causal mask (1, 1, L, L) for sequences concatenated in one row; with `window` a query
    sees only the last `window` positions (sliding-window attention, as transformers masks it)."""
    seq_ids = torch.repeat_interleave(torch.arange(len(seq_lens), device=seq_lens.device), seq_lens)
    n = seq_ids.shape[0]
    idx = torch.arange(n, device=seq_lens.device)
    allowed = (seq_ids[:, None] == seq_ids[None, :]) & (idx[:, None] >= idx[None, :])
    if window:
        allowed &= (idx[:, None] - idx[None, :]) < window
    if boolean:
        return allowed[None, None]
    return torch.zeros((n, n), dtype=dtype, device=seq_lens.device).masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


def packed_masks(config, seq_lens: torch.Tensor, dtype: torch.dtype):
    """The attention mask(s) of a padding-free row for this model: None for flash-attention and VARLEN (they read
    the borders from position_ids; flash-attention applies sliding windows itself); a block mask for sdpa/eager,
    and for models with sliding-window layers one mask per layer type, as transformers' decoders accept them."""
    impl = getattr(config, "_attn_implementation", "sdpa") or "sdpa"
    if "flash" in impl or impl == VARLEN:
        return None
    boolean = impl == "sdpa"
    full = packed_attention_mask(seq_lens, dtype, boolean)
    window = getattr(config, "sliding_window", None)
    types = set(getattr(config, "layer_types", None) or ())
    if window and "sliding_attention" in types:
        return {"full_attention": full, "sliding_attention": packed_attention_mask(seq_lens, dtype, boolean, window)}
    if window and not types and getattr(config, "use_sliding_window", True):  # one window for every layer
        return packed_attention_mask(seq_lens, dtype, boolean, window)
    return full


def logit_softcap(config) -> float | None:
    """Final-logit soft-capping (Gemma-2: logits = cap * tanh(logits / cap)), which the fused loss must apply."""
    return getattr(config, "final_logit_softcapping", None) or None


@contextmanager
def as_reference(model):
    """Run a PEFT policy as its reference: its frozen "ref" adapter (a run started from --adapters) or, for new
    adapters, the base model with adapters disabled. A plain model is its own (frozen-copy-less) reference.
    The reference is evaluated without dropout."""
    peft_config = getattr(model, "peft_config", None)
    was_training = model.training
    model.eval()
    try:
        if peft_config is None:
            yield
        elif "ref" in peft_config:
            previous = model.active_adapter
            model.set_adapter("ref", inference_mode=True)
            try:
                yield
            finally:
                model.set_adapter(previous)
        else:
            with model.disable_adapter():
                yield
    finally:
        model.train(was_training)


class FrozenReference:
    """For objectives with a frozen reference model in `self.ref` (or None): the trainer puts its loss module in
    train mode each step; the reference stays in eval mode (no dropout: it scores the same sequence the same way
    every time, and as --precompute_ref_logps / the LoRA path's as_reference do)."""

    def train(self, mode: bool = True):
        super().train(mode)
        if self.ref is not None:
            self.ref.eval()
        return self


class CausalLMLoss(nn.Module):
    """Wraps a (PEFT or plain) causal LM; forward returns the summed loss and the token count.

    Kept as a module so DistributedDataParallel hooks see the forward pass.
    """

    def __init__(self, model: nn.Module, chunk_size: int | None = None, neftune_alpha: float | None = None,
                 router_aux_coef: float = 0.0):
        super().__init__()
        self.model = model
        self.router_aux_coef = router_aux_coef  # weight of an MoE model's load-balancing loss (train/moe_balance.py)
        weight = self.causal_lm.get_output_embeddings().weight
        vocab = getattr(weight, "ds_shape", weight.shape)[0]  # a ZeRO-3 partitioned weight is empty here
        self.chunk_size = chunk_size or max(16, LOGITS_PER_CHUNK // vocab)
        self.softcap = logit_softcap(self.decoder_config)
        self.neftune_alpha, self._lengths = neftune_alpha, None
        if neftune_alpha:
            self.causal_lm.get_input_embeddings().register_forward_hook(self._neftune)

    def _neftune(self, module, args, output):
        """NEFTune (Jain et al., 2023): uniform noise on the input embeddings while training, in [-m, m] with
        m = alpha / sqrt(L d) for a token of a sequence of L tokens. Each sequence has its own L: a padded or packed
        row's length (what transformers' Trainer uses) would make one sequence's noise depend on its batch."""
        if not module.training or self._lengths is None:
            return output
        scale = self.neftune_alpha / torch.sqrt(self._lengths.to(output.device, torch.float32) * output.shape[-1])
        return output + (torch.empty_like(output, dtype=torch.float32).uniform_(-1, 1) * scale[..., None]).to(
            output.dtype)

    @property
    def decoder_config(self):
        """The language model's own config (a multimodal model's text config)."""
        return self.causal_lm.get_decoder().config

    @property
    def causal_lm(self) -> nn.Module:
        m = self.model
        return m.get_base_model() if hasattr(m, "get_base_model") else m

    def forward(self, input_ids, targets, position_ids=None, attention_mask=None, seq_lens=None, **images):
        """(summed loss, tokens, extra metric sums). `images`: a vision-language batch's pixel_values,
        image_grid_thw and mm_token_type_ids (data/collate.py ImageCollate)."""
        lm = self.causal_lm
        # flash-attention and wb_varlen take the sequence borders; sdpa/eager need the mask
        hidden, aux = self.hidden_and_balance(input_ids, position_ids, attention_mask, seq_lens, **images)
        keep = targets != IGNORE_INDEX
        loss_sum = linear_cross_entropy(lm.get_output_embeddings(), hidden[keep], targets[keep], self.chunk_size,
                                        self.softcap)
        tokens = keep.sum()
        return self.add_balance(loss_sum, aux, tokens)

    def add_balance(self, loss_sum: torch.Tensor, aux: torch.Tensor | None, weight) -> tuple:
        """(loss sum, weight, metric sums) with the load-balancing loss of the forward counted `weight` times, so
        that the trainer's mean over the step's weight adds coefficient x aux_loss, as transformers does."""
        if aux is None:
            return loss_sum, weight, {}
        return loss_sum + self.router_aux_coef * aux * weight, weight, {"aux_loss": float(aux.detach()) * float(weight)}

    @staticmethod
    def weight(batch: dict) -> float:
        """What the loss is averaged over: trained tokens."""
        return float((batch["targets"] != IGNORE_INDEX).sum())

    def hidden_states(self, input_ids, position_ids=None, attention_mask=None, seq_lens=None,
                      **images) -> torch.Tensor:
        return self.hidden_and_balance(input_ids, position_ids, attention_mask, seq_lens, **images)[0]

    def hidden_and_balance(self, input_ids, position_ids=None, attention_mask=None, seq_lens=None,
                           **images) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder's last hidden states, and the MoE load-balancing loss of this forward when the run weights
        one and gradients are on (else None: evaluation and reference passes leave it out)."""
        if self.neftune_alpha:  # (read by the embedding's hook, _neftune)
            self._lengths = sequence_lengths(input_ids, attention_mask, seq_lens)
        balance = bool(self.router_aux_coef) and torch.is_grad_enabled()
        try:
            out = self._decoder_output(input_ids, position_ids, attention_mask, seq_lens, balance, **images)
        finally:
            self._lengths = None
        if not balance:
            return out.last_hidden_state, None
        from .moe_balance import balance_function, expert_counts

        mask = attention_mask if seq_lens is None else None  # (packed rows hold no padding)
        aux = balance_function(self.causal_lm)(out.router_logits, *expert_counts(self.decoder_config), mask)
        return out.last_hidden_state, aux

    def _decoder_output(self, input_ids, position_ids, attention_mask, seq_lens, balance: bool, **images):
        lm = self.causal_lm
        borders, router = {}, ({"output_router_logits": True} if balance else {})
        if seq_lens is not None:
            attention_mask = packed_masks(self.decoder_config, seq_lens, lm.dtype)
            if attention_mask is None:  # a kernel that takes the borders
                borders = sequence_borders(seq_lens, lm.get_decoder())
        if "mm_token_type_ids" in images:  # a vision-language model: images merged in, M-RoPE positions
            if seq_lens is not None:
                position_ids = packed_mrope_positions(lm.model, input_ids, position_ids, seq_lens, images)
            else:  # padded rows: the model's own M-RoPE positions, from mm_token_type_ids and the mask
                position_ids = None
            return lm.model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                            use_cache=False, **borders, **router, **images)
        return lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                                use_cache=False, **borders, **router)


def sequence_lengths(input_ids: torch.Tensor, attention_mask=None, seq_lens=None) -> torch.Tensor:
    """The length of the sequence each token belongs to, shaped as `input_ids`: a packed row's sequences (seq_lens),
    a padded row's tokens (its mask), else the row."""
    rows, width = input_ids.shape
    if seq_lens is not None:
        lengths = torch.repeat_interleave(seq_lens, seq_lens)
        return torch.nn.functional.pad(lengths, (0, width - len(lengths)), value=width)[None]
    if attention_mask is not None and attention_mask.dim() == 2:
        return attention_mask.sum(1, keepdim=True).clamp(min=1).expand(rows, width)
    return torch.full((rows, width), width)


def sequence_borders(seq_lens: torch.Tensor, decoder: nn.Module) -> dict:
    """A padding-free row's cumulative sequence lengths and longest sequence, as transformers' flash-attention
    keyword arguments, which its decoders hand every attention layer: computed once per forward pass (read from
    position_ids in each layer instead, every layer would wait for the GPU to report them). Empty for a decoder
    whose forward takes no such keywords (remote code): its layers read position_ids."""
    if not _takes_keywords(type(decoder).forward):
        return {}
    cu = torch.nn.functional.pad(seq_lens.cumsum(0), (1, 0)).to(torch.int32)
    longest = int(seq_lens.max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


@functools.lru_cache(maxsize=32)
def _takes_keywords(forward) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(forward).parameters.values())


def packed_mrope_positions(vl_model, input_ids, position_ids, seq_lens, images: dict) -> torch.Tensor:
    """(4, 1, L) positions of a padding-free vision-language row: the text positions (restarting at 0 in every
    sequence, from which the attention kernels read the borders), then the model's own M-RoPE positions
    (`get_rope_index`) computed per sequence, each with its own images and videos, and concatenated."""
    types = images["mm_token_type_ids"][0]
    merge = vl_model.config.vision_config.spatial_merge_size ** 2
    # per modality (1 image, 2 video): its grids, the tokens each becomes, how many are taken; videos' seconds
    media = {kind: [grids, (grids.prod(-1) // merge).tolist(), 0] for kind, key in ((1, "image_grid_thw"),
             (2, "video_grid_thw")) if (grids := images.get(key)) is not None}
    parts, start = [], 0
    for n in seq_lens.tolist():
        ids, tt = input_ids[:, start:start + n], types[None, start:start + n]
        kwargs = {}
        for kind, (grids, tokens, taken) in media.items():
            left, first = int((tt == kind).sum()), taken
            while left > 0:
                left -= tokens[taken]
                taken += 1
            media[kind][2] = taken
            if taken > first:
                kwargs["image_grid_thw" if kind == 1 else "video_grid_thw"] = grids[first:taken]
                if kind == 2 and "second_per_grid_ts" in images:
                    kwargs["second_per_grid_ts"] = images["second_per_grid_ts"][first:taken]
        if kwargs:
            pos, _ = vl_model.get_rope_index(ids, tt, **kwargs)
        else:  # text only: the same position on every axis
            pos = torch.arange(n, device=ids.device).view(1, 1, n).expand(3, 1, n)
        parts.append(pos)
        start += n
    return torch.cat([position_ids[None].to(parts[0].dtype), torch.cat(parts, dim=-1)], dim=0)
