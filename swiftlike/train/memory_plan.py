"""Per-device memory of a training run, from the model's config alone (`--dry_run`; docs/distributed.md).

Nothing here loads weights or data. `architecture(config)` reads the sizes that memory depends on,
`parameter_count` / `lora_parameter_count` count parameters by formula (tests/test_memory_plan.py checks them
against models built from configs), and `plan(arch, Setup(...))` adds up:

  weights      every parameter in its stored dtype (QLoRA: 4-bit NF4 linear layers, the rest upcast to fp32 as
               peft's prepare_model_for_kbit_training does), plus a full-parameter run's frozen reference
  gradients    one per trainable parameter, in its dtype (LoRA adapters are float32: peft upcasts them)
  optimizer    torch AdamW's exp_avg and exp_avg_sq in the parameter's dtype (no master copy) without ZeRO, and
               under FSDP2 sharded (with the weights and gradients, in their own dtype); with a ZeRO stage,
               DeepSpeed's mixed-precision accounting (fp32 master + moments: 12 bytes a parameter), sharded as the
               stage shards it. --optim's 8-bit and 4-bit moments take `optimizer_state_bytes` instead. What an
               engine offloads is reported as host memory (`MemoryPlan.host`), not on the device
  activations  what autograd keeps for backward, per token and layer (`layer_bytes_per_token`), the attention
               masks (quadratic in the tokens of a row), LoRA's adapted fused-expert weights (per MoE layer:
               `adapted_experts_bytes`), the final norm, and the fused loss's own buffers
               (train/loss.py: chunks of fp32 logits, the hidden-state gradient, and with a trainable output
               layer its fp32 weight gradient)

The peak is not the sum: gradients are set to None after each optimizer step, so during the forward and at the
start of backward the activations are alive but the gradients are not (unless gradients accumulate over
micro-batches); at the optimizer step the gradients and the step's temporaries are. The peak is weights +
optimizer states + the cuBLAS workspaces + the largest of those phases (`MemoryPlan.phases`).
benchmarks/memory_plan.py measures real steps against it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from ..models.attention import VARLEN, fused_varlen_runs
from .optim import BUCKET as ROUNDING_BUCKET

MASKLESS = ("flash_attention_2", VARLEN)  # kernels that take the sequence borders: no mask

GiB = 1 << 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LOGITS_PER_CHUNK = 1 << 27  # train/loss.py's chunk of output-layer logits (kept in step by a test)
NF4_BLOCK = 64  # bitsandbytes 4-bit: one absmax per 64 weights
NF4_DOUBLE_QUANT_BLOCK = 256  # with double quantization: absmax as 8-bit, one fp32 scale per 256 absmax
# bytes per 4-bit parameter: 4 bits + an 8-bit absmax per 64 weights + an fp32 scale per 64 * 256 weights
NF4_BYTES = 0.5 + 1 / NF4_BLOCK + 4 / (NF4_BLOCK * NF4_DOUBLE_QUANT_BLOCK)
CUDA_CONTEXT = 1 * GiB  # the CUDA context and kernels: what a card loses before the first tensor
CUBLAS_WORKSPACE = 64 << 20  # cuBLAS + cuBLASLt workspaces, allocated through torch's allocator on first use
FRAGMENTATION = 0.10  # torch's caching allocator reserved up to 16% more than it handed out (docs)
ZERO_STAGES = ("none", "zero1", "zero2", "zero3")
GEMMA_NORM = ("gemma", "gemma2", "gemma3", "gemma3_text")  # norms computed in fp32: (1 + w) * x.float()
FORMULA_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "glm",
                 "internlm3", "qwen3_moe", "mixtral", "deepseek_v3")
ALL_LINEAR = (None, "all-linear", ["all-linear"], ("all-linear",))  # peft's target_modules="all-linear"
MEASURED_TYPES = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma2")  # checked against measured peaks


# -- the architecture ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Linear:
    """One linear map of a decoder layer: `count` of them (MoE experts) from `fan_in` to `fan_out` features."""

    name: str
    fan_in: int
    fan_out: int
    count: int = 1
    bias: bool = False
    group: str = ""       # linears reading the same input tensor (q/k/v; gate/up)
    fused_experts: bool = False  # a 3-D expert parameter (transformers 5), which peft adapts per expert
    all_linear: bool = True      # adapted by target_modules all-linear

    @property
    def params(self) -> int:
        return self.count * (self.fan_in * self.fan_out + (self.fan_out if self.bias else 0))


@dataclass(frozen=True)
class Arch:
    """What memory depends on, read from a transformers config (the text model's for multimodal ones)."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    intermediate: int
    q_dim: int                      # query width (heads x head_dim; MLA: heads x (nope + rope))
    k_dim: int                      # key width
    v_dim: int                      # value width
    norms_per_layer: int = 2
    qk_norm: bool = False
    attn_softcap: bool = False      # Gemma-2's soft-capped attention scores: eager attention
    mask_kinds: int = 1             # attention masks built per forward (Gemma-2/3: sliding-window and full)
    logit_softcap: bool = False     # Gemma-2's soft-capped output logits (the loss's chunks: tanh and its slope)
    dense_linears: tuple = ()       # the linears of a layer with a dense MLP
    moe_linears: tuple = ()         # the linears of a mixture-of-experts layer
    moe_layers: int = 0
    experts: int = 0
    experts_per_token: int = 0
    moe_intermediate: int = 0
    shared_intermediate: int = 0
    layer_norm_params: int = 0      # norm weights of one layer
    params_by: str = "formula"      # how the parameter count was made: formula or "meta device" (built empty)
    notes: tuple = ()

    @property
    def dense_layers(self) -> int:
        return self.layers - self.moe_layers


def _get(cfg, *names, default=None):
    for name in names:
        value = getattr(cfg, name, None)
        if value is not None:
            return value
    return default


def architecture(config) -> Arch:
    """The Arch of a transformers config (AutoConfig / PretrainedConfig)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    model_type = getattr(text, "model_type", "") or getattr(config, "model_type", "")
    h = text.hidden_size
    heads = text.num_attention_heads
    kv = _get(text, "num_key_value_heads", default=heads)
    d = _get(text, "head_dim", default=h // heads)
    inter = _get(text, "intermediate_size", default=4 * h)
    vocab = text.vocab_size
    tied = bool(_get(config, "tie_word_embeddings", default=True)) if text is not config else \
        bool(_get(text, "tie_word_embeddings", default=True))
    attn_bias = bool(_get(text, "attention_bias", default=False))
    mlp_bias = bool(_get(text, "mlp_bias", default=False))
    q_dim, k_dim, v_dim = heads * d, kv * d, kv * d
    qkv_bias = attn_bias or model_type == "qwen2"
    o_bias = attn_bias and model_type in ("llama", "mistral", "internlm3", "qwen3", "qwen3_moe", "mixtral",
                                          "gemma", "gemma2", "gemma3_text")
    notes = []
    # attention
    if model_type == "deepseek_v3":
        nope, rope, vd = text.qk_nope_head_dim, text.qk_rope_head_dim, text.v_head_dim
        qr, kvr = text.q_lora_rank, text.kv_lora_rank
        q_dim, k_dim, v_dim = heads * (nope + rope), heads * (nope + rope), heads * vd
        attn = ([Linear("q_a_proj", h, qr, bias=attn_bias), Linear("q_b_proj", qr, q_dim)] if qr else
                [Linear("q_proj", h, q_dim)])
        attn += [Linear("kv_a_proj_with_mqa", h, kvr + rope, bias=attn_bias),
                 Linear("kv_b_proj", kvr, heads * (nope + vd)), Linear("o_proj", heads * vd, h, bias=attn_bias)]
        norm_params = 2 * h + (qr or 0) + kvr
        notes.append("multi-head latent attention: activations approximated as standard attention of the same widths")
    elif model_type == "phi3":
        attn = [Linear("qkv_proj", h, q_dim + 2 * k_dim), Linear("o_proj", q_dim, h)]
        norm_params = 2 * h
    else:
        attn = [Linear("q_proj", h, q_dim, bias=qkv_bias, group="qkv"),
                Linear("k_proj", h, k_dim, bias=qkv_bias, group="qkv"),
                Linear("v_proj", h, v_dim, bias=qkv_bias, group="qkv"),
                Linear("o_proj", q_dim, h, bias=o_bias)]
        norm_params = 2 * h
    qk_norm = model_type in ("qwen3", "qwen3_moe", "gemma3_text")
    norms = 4 if model_type in ("gemma2", "gemma3_text") else 2
    norm_params += (norms - 2) * h + (2 * d if qk_norm else 0)
    # MLP
    if model_type in ("phi3", "glm"):
        dense = [Linear("gate_up_proj", h, 2 * inter), Linear("down_proj", inter, h)]
    else:
        dense = [Linear("gate_proj", h, inter, bias=mlp_bias, group="up"),
                 Linear("up_proj", h, inter, bias=mlp_bias, group="up"),
                 Linear("down_proj", inter, h, bias=mlp_bias)]
    experts = _get(text, "num_experts", "num_local_experts", "n_routed_experts", default=0) or 0
    moe_layers, moe, top_k, m_inter, shared = 0, [], 0, 0, 0
    if experts:
        top_k = text.num_experts_per_tok
        m_inter = _get(text, "moe_intermediate_size", default=inter)
        if model_type == "qwen3_moe":
            sparse = [i for i in range(text.num_hidden_layers) if i not in (text.mlp_only_layers or [])
                      and (i + 1) % text.decoder_sparse_step == 0]
            moe_layers = len(sparse)
        elif model_type == "deepseek_v3":
            moe_layers = text.num_hidden_layers - text.first_k_dense_replace
        else:
            moe_layers = text.num_hidden_layers
        moe = [Linear("gate", h, experts, fused_experts=False, group="router"),
               Linear("experts.gate_up_proj", h, 2 * m_inter, count=experts, fused_experts=True),
               Linear("experts.down_proj", m_inter, h, count=experts, fused_experts=True)]
        if model_type == "deepseek_v3":
            shared = m_inter * (text.n_shared_experts or 0)
            if shared:
                moe += [Linear("shared_experts.gate_proj", h, shared, group="shared"),
                        Linear("shared_experts.up_proj", h, shared, group="shared"),
                        Linear("shared_experts.down_proj", shared, h)]
        # peft's all-linear leaves a MoE model's gate_proj/up_proj/down_proj linears (dense layers, shared experts)
        # alone: those names stand for the fused experts' parts in its weight conversion
        dense = [replace(lin, all_linear=False) if lin.name in ("gate_proj", "up_proj", "down_proj") else lin
                 for lin in dense]
        moe = [replace(lin, all_linear=False) if not lin.fused_experts and
               lin.name.rsplit(".", 1)[-1] in ("gate_proj", "up_proj", "down_proj") else lin for lin in moe]
        notes.append("mixture of experts: activations approximate (routed tokens per expert as if balanced)")
    return Arch(model_type=model_type, hidden=h, layers=text.num_hidden_layers, heads=heads, kv_heads=kv,
                head_dim=d, vocab=vocab, tied=tied, intermediate=inter, q_dim=q_dim, k_dim=k_dim, v_dim=v_dim,
                norms_per_layer=norms, qk_norm=qk_norm,
                attn_softcap=bool(_get(text, "attn_logit_softcapping", default=None)),
                mask_kinds=max(1, len(set(_get(text, "layer_types", default=None) or ()))),
                logit_softcap=bool(_get(text, "final_logit_softcapping", default=None)),
                dense_linears=tuple(attn + dense), moe_linears=tuple(attn + moe) if experts else (),
                moe_layers=moe_layers, experts=experts, experts_per_token=top_k, moe_intermediate=m_inter,
                shared_intermediate=shared, layer_norm_params=norm_params, notes=tuple(notes))


def parameter_count(arch: Arch, reward_head: bool = False) -> int:
    """All parameters: embeddings, decoder layers, final norm, output layer (none when tied; a one-output score
    layer for a reward model)."""
    dense = sum(lin.params for lin in arch.dense_linears) + arch.layer_norm_params
    moe = sum(lin.params for lin in arch.moe_linears) + arch.layer_norm_params if arch.moe_layers else 0
    head = arch.hidden if reward_head else (0 if arch.tied else arch.vocab * arch.hidden)
    return arch.vocab * arch.hidden + arch.dense_layers * dense + arch.moe_layers * moe + arch.hidden + head


def quantized_parameter_count(arch: Arch) -> int:
    """Parameters QLoRA stores in 4 bits: the decoder's nn.Linear layers. bitsandbytes replaces nn.Linear modules
    only, so a MoE model's fused 3-D experts and its router weight keep the compute dtype (and peft's
    prepare_model_for_kbit_training then upcasts them to float32, with the embeddings and norms)."""
    def linear(lins) -> int:
        return sum(lin.params for lin in lins if not lin.fused_experts and lin.group != "router")
    return arch.dense_layers * linear(arch.dense_linears) + arch.moe_layers * linear(arch.moe_linears)


def _adapted(lin: Linear, targets) -> bool:
    if targets in ALL_LINEAR:
        return lin.all_linear
    short = lin.name.rsplit(".", 1)[-1]
    return any(t == lin.name or t == short or (t.startswith("experts") and lin.name.startswith(t)) for t in targets)


def lora_parameter_count(arch: Arch, rank: int, targets=("all-linear",)) -> int:
    """LoRA parameters: r x (in + out) per adapted linear map. peft adapts a fused 3-D expert parameter with rank
    r per expert (lora_A: r*E x in, lora_B: out x r*E), the fused gate_up one with rank 2r (the gate's and the up
    projection's adapters, as peft converts them), and a router weight as one matrix."""
    def per_layer(linears) -> int:
        total = 0
        for lin in linears:
            if not _adapted(lin, targets):
                continue
            r = 2 * rank if lin.name.endswith("gate_up_proj") and lin.fused_experts else rank
            total += lin.count * r * (lin.fan_in + lin.fan_out)
        return total
    return arch.dense_layers * per_layer(arch.dense_linears) + arch.moe_layers * per_layer(arch.moe_linears)


# -- the run ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setup:
    """How the model is trained: what `wb sft/pt/dpo/kto/rm/grpo` options decide (pipelines/dry_run.py)."""

    task: str = "sft"                  # sft | pt | dpo | kto | rm | grpo
    method: str = "lora"               # full | lora | qlora
    dtype: str = "bfloat16"
    batch: int = 4                     # per_device_train_batch_size
    seq_len: int = 2048                # longest sequence (GRPO: prompt + completion)
    accumulation: int = 1
    gradient_checkpointing: bool = False
    attn: str = "sdpa"                 # sdpa | flash_attention_2 | wb_varlen | eager
    padding_free: bool = True
    lora_rank: int = 8
    lora_dropout: float = 0.05
    target_modules: tuple = ("all-linear",)
    optim: str = "adamw"               # --optim (train/engines.OPTIMIZERS)
    zero: str = "none"                 # ZeRO stage (DeepSpeed's accounting; FSDP shards as zero3 does)
    engine: str = "ddp"                # ddp (one process or DDP; with a ZeRO stage: DeepSpeed) | deepspeed | fsdp
    offload_optimizer: bool = False    # optimizer states in host memory (DeepSpeed offload_optimizer, FSDP cpu_offload)
    offload_params: bool = False       # sharded weights in host memory (ZeRO-3 offload_param, FSDP cpu_offload)
    reshard_after_forward: bool = True  # FSDP: False keeps every layer's weights gathered from forward to backward
    devices: int = 1
    device: str = "cuda"               # cuda (what a card runs) or cpu (how the tests measure)
    reference_copy: bool = False       # a full-parameter run that keeps a frozen reference model
    frozen: tuple = ("vit", "aligner")  # vision-language parts that do not train (--freeze_vit/_aligner/_llm)
    trainable: int | None = None       # full training of a part (--trainable/--freeze_parameters): what trains
    # GRPO generation (the transformers backend)
    generation_sequences: int = 0      # sequences decoded together
    prompt_len: int = 0
    completion_len: int = 0
    vllm_fraction: float = 0.0         # colocated vLLM: the share of the card its engine takes


def optimizer_state_bytes(optim: str, param_bytes: int) -> float:
    """Bytes of optimizer state a trainable parameter of `param_bytes` bytes takes: AdamW's two moments in its
    dtype; torchao's 8-bit (blocks of 256) and 4-bit (blocks of 128) moments with one fp32 scale a block each;
    bitsandbytes' paged 8-bit (blocks of 256) and 32-bit moments. (The quantized ones leave parameters under 4,096
    values in their dtype: a negligible share of a model's.)"""
    return {"adamw_8bit": 2 + 8 / 256, "adamw_4bit": 1 + 8 / 128, "paged_adamw_8bit": 2 + 8 / 256,
            "paged_adamw_32bit": 8}.get(optim, 2 * param_bytes)


@dataclass
class Part:
    name: str
    bytes: float
    detail: str = ""


@dataclass
class MemoryPlan:
    """The estimate for one device. `parts` splits it; `peak` is what the card must hold at once."""

    model: str
    arch: Arch
    setup: Setup
    params: int
    trainable: int
    parts: list = field(default_factory=list)
    peak: float = 0.0
    phases: dict = field(default_factory=dict)   # phase name -> bytes above weights + optimizer states
    capacity: float | None = None                # the card (--gpu_memory), bytes
    notes: list = field(default_factory=list)
    detail: dict = field(default_factory=dict)   # the activation terms, for tests and docs
    host: float = 0.0                            # bytes an offloading engine keeps in host memory, per rank
    vision: dict | None = None                   # a vision-language model's parts (`plan`'s `parts`)

    def part(self, name: str) -> float:
        return sum(p.bytes for p in self.parts if p.name == name)

    @property
    def fits(self) -> bool | None:
        if self.capacity is None:
            return None
        return self.needed <= self.capacity * (1 - self.setup.vllm_fraction)

    @property
    def needed(self) -> float:
        """What the card must have: the peak, the allocator's slack over it, the CUDA context."""
        return self.peak * (1 + FRAGMENTATION) + CUDA_CONTEXT

    def as_dict(self) -> dict:
        return {"model": self.model, "params": self.params, "trainable": self.trainable,
                "parts": {p.name: p.bytes for p in self.parts}, "peak": self.peak, "phases": dict(self.phases),
                "capacity": self.capacity, "fits": self.fits, "notes": list(self.notes), "host": self.host}


def tokens_per_micro_batch(s: Setup) -> tuple[int, int, int]:
    """(tokens, attention rows, tokens per row) of one micro-batch, at the longest sequences. Pairwise methods
    (dpo, rm: chosen + rejected; kto: matched + mismatched answers) run two sequences per example; padding-free
    batches are one row holding all of them."""
    seqs = s.batch * (2 if s.task in ("dpo", "kto", "rm") else 1)
    tokens = seqs * s.seq_len
    if s.padding_free and s.task != "grpo":
        return tokens, 1, tokens
    return tokens, seqs, s.seq_len


def _linear_input_bytes(lins, s: Setup, a: int, full: bool, kept: bool = False) -> float:
    """Bytes per token kept for the input of linear maps that read one tensor (q/k/v, gate/up): the tensor once
    when their weights or adapters train (nothing when something else keeps it already: `kept`) — the adapters
    compute in the stream's dtype (models/lora_compute.py), so the maps share it — or under LoRA dropout each
    adapted map's dropout mask and output; plus lora_A's output (r values) per adapted map."""
    fan_in = lins[0].fan_in
    if full:
        return 0.0 if kept else a * fan_in
    adapted = [lin for lin in lins if _adapted(lin, s.target_modules)]
    if not adapted:
        return 0.0
    total = a * s.lora_rank * len(adapted)
    if s.lora_dropout > 0:
        mask = 1 if s.device != "cpu" else a  # CUDA's fused dropout keeps a bool mask; CPU's one in the dtype
        return total + len(adapted) * (mask + a) * fan_in
    return total + (0 if kept else a * fan_in)


def _norm_bytes(width: int, a: int, full: bool, gemma: bool) -> float:
    """RMSNorm keeps its input upcast to fp32 and the per-row rsqrt; with a trainable weight also the normalised
    tensor (in the model's dtype; Gemma's in fp32)."""
    return 4 * width + (((4 if gemma else a) * width) if full else 0)


ATTENTION_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "q_a_proj", "q_b_proj",
                     "kv_a_proj_with_mqa", "kv_b_proj")


def layer_bytes_per_token(arch: Arch, s: Setup, moe: bool = False, mlp_only: bool = False) -> float:
    """Bytes autograd keeps for backward per token in one decoder layer (docs/distributed.md derives each term).
    Attention masks are separate: `mask_bytes`. `mlp_only`: the part kept after the attention (the norms after it,
    the MLP), which backward has freed by the time it reaches the attention."""
    full = s.method == "full"
    a = 4 if s.method == "qlora" else DTYPE_BYTES[s.dtype]  # QLoRA: embeddings and norms upcast, so is the stream
    gemma = arch.model_type in GEMMA_NORM
    h = arch.hidden
    total = (arch.norms_per_layer - (1 if mlp_only else 0)) * (_norm_bytes(h, a, full, gemma) + 4)
    linears = arch.moe_linears if moe else arch.dense_linears
    groups: dict[str, list] = {}
    for lin in linears:
        if lin.fused_experts or lin.group == "router" or (mlp_only and lin.name in ATTENTION_LINEARS):
            continue
        groups.setdefault(lin.group or lin.name, []).append(lin)
    # o_proj reads the attention output, which the attention kernel keeps anyway (its layout is already the one
    # o_proj reads, so transformers' transpose + contiguous copies nothing) — but for wb_varlen's per-sequence sdpa
    # calls (on CPU, and in fp32 on CUDA, which flash-attention does not take), whose outputs (kept by each call)
    # are concatenated into a new tensor that o_proj keeps
    shared = s.attn != VARLEN or fused_varlen_runs(s.device, s.dtype)
    total += sum(_linear_input_bytes(lins, s, a, full, kept=name == "o_proj" and shared)
                 for name, lins in groups.items())
    if not mlp_only:
        total += _attention_bytes_per_token(arch, s, a, full, gemma)
    return total + _mlp_bytes_per_token(arch, a, moe)


def _attention_bytes_per_token(arch: Arch, s: Setup, a: int, full: bool, gemma: bool) -> float:
    total = 0.0
    if arch.qk_norm:
        total += _norm_bytes(arch.q_dim, a, full, gemma) + _norm_bytes(arch.k_dim, a, full, gemma) \
            + 4 * (arch.heads + arch.kv_heads)
    # attention: queries, keys and values as the kernel keeps them, its output, log-sum-exp per head
    repeat = s.attn not in MASKLESS and arch.kv_heads < arch.heads  # transformers repeats kv heads for masks
    kv = 2 * arch.q_dim if repeat else arch.k_dim + arch.v_dim
    return total + a * (arch.q_dim + kv) + a * arch.q_dim + 4 * arch.heads


def _mlp_bytes_per_token(arch: Arch, a: int, moe: bool) -> float:
    """The MLP: gate output (the activation's input), activation output and up output (the product's inputs)."""
    h = arch.hidden
    if moe:
        k, m = arch.experts_per_token, arch.moe_intermediate
        # per routed token: its gathered input, gate_up output, activation, product, expert output; router softmax
        total = k * a * (2 * h + 4 * m) + 4 * arch.experts + a * h
        return total + (3 * a * arch.shared_intermediate if arch.shared_intermediate else 0)
    return 3 * a * arch.intermediate


def backward_bytes_per_token(arch: Arch, s: Setup) -> float:
    """Gradients in flight while backward passes one layer's MLP (its widest part): of the down projection's input,
    its activation and up inputs (3 x intermediate in the compute dtype); under LoRA the adapter adds its own (and
    its dropout's) gradient of that input, in the same dtype."""
    a = 4 if s.method == "qlora" else DTYPE_BYTES[s.dtype]
    width = max(arch.intermediate if arch.dense_layers else 0,
                arch.moe_intermediate * arch.experts_per_token + arch.shared_intermediate)
    if s.method == "full":
        return 3 * a * width
    down = [lin for lin in arch.dense_linears if lin.name == "down_proj"]
    if not down or not _adapted(down[0], s.target_modules):
        return 3 * a * width
    return (2 * a + (a if s.lora_dropout > 0 else 0)) * width


def adapted_experts_bytes(arch: Arch, s: Setup) -> float:
    """Bytes one MoE layer keeps for its LoRA-adapted fused experts, whatever the tokens: peft adapts a 3-D expert
    parameter by adding the low-rank product to the whole stack on every forward (ParamWrapper: `baddbmm(W, B, A)`,
    E x in x out values in the parameter's dtype — QLoRA's upcast float32 experts in float32), and the experts'
    matmuls keep that new weight for backward: about E x 3 x h x m values a layer (gate_up and down)."""
    if s.method == "full" or not arch.moe_layers:
        return 0.0
    a = 4 if s.method == "qlora" else DTYPE_BYTES[s.dtype]
    return a * sum(lin.count * lin.fan_in * lin.fan_out for lin in arch.moe_linears
                   if lin.fused_experts and _adapted(lin, s.target_modules))


def mask_bytes(s: Setup, a: int, rows: int, per_row: int) -> tuple[float, float]:
    """(bytes per layer, bytes once) of attention masks. sdpa is given a boolean block mask (padding-free: the
    whole micro-batch is one row, so it is quadratic in its tokens) and keeps a copy converted to the compute
    dtype for backward in every layer; eager attention keeps its fp32 softmax (and a copy in the compute dtype)
    per head; flash-attention needs none."""
    square = rows * per_row * per_row
    if s.attn in MASKLESS:
        return 0.0, 0.0
    if s.attn == "eager":
        return 0.0, 0.0  # the per-head scores and the additive masks are added by the caller
    return a * square, square


PART_NAMES = {"vit": "vision encoder", "aligner": "merger", "llm": "language model"}


def plan(arch: Arch, s: Setup, model: str = "", capacity: float | None = None, params: int | None = None,
         parts: dict | None = None) -> MemoryPlan:
    """The per-device memory of training `arch` as `s` says. `parts`: a vision-language model's parts (loader's
    vision_part: "vit", "aligner", "llm") -> (parameters, the sum of in + out features of its nn.Linear layers but
    the output layer): what trains of them follows `s.frozen`, as models/loader.py's freeze_vision_parts (full) and
    vision_language_targets (LoRA on all-linear) decide."""
    if s.zero not in ZERO_STAGES:
        raise ValueError(f"unknown ZeRO stage {s.zero!r}")
    reward = s.task == "rm"
    n_params = params if params is not None else parameter_count(arch, reward_head=reward)
    b = DTYPE_BYTES[s.dtype]
    a = 4 if s.method == "qlora" else b
    n_dev = max(1, s.devices)
    full = s.method == "full"
    trained = [part for part in (parts or {}) if part not in s.frozen]
    if full:
        trainable, train_bytes = (sum(parts[part][0] for part in trained) if parts else n_params), b
        if s.trainable is not None:  # (activations stay planned as for every parameter: an upper bound)
            trainable = s.trainable
    else:
        if parts and s.target_modules in ALL_LINEAR:
            trainable = s.lora_rank * sum(parts[part][1] for part in trained)
        else:
            trainable = lora_parameter_count(arch, s.lora_rank, s.target_modules)
        train_bytes = 4
        if reward:
            trainable += arch.hidden  # the score layer trains beside the adapters (modules_to_save)
    p = MemoryPlan(model=model, arch=arch, setup=s, params=n_params, trainable=trainable, capacity=capacity,
                   notes=list(arch.notes), vision=parts)
    if parts:
        frozen = [f"{PART_NAMES[part]} {fmt_params(parts[part][0])}" for part in parts if part not in trained]
        what = ("train" if full else "get adapters") if len(trained) > 1 else ("trains" if full else "gets adapters")
        p.notes.append("vision-language model: " + ", ".join(f"{PART_NAMES[part]} {fmt_params(parts[part][0])}"
                                                             for part in trained)
                       + f" {what}" + (f"; frozen: {', '.join(frozen)}" if frozen else ""))

    # weights
    if s.method == "qlora":
        quantized = quantized_parameter_count(arch)
        base = quantized * NF4_BYTES + (n_params - quantized) * 4
        rest = "embeddings, norms" + (", experts" if arch.experts else "")
        detail = (f"{fmt_params(quantized)} in 4-bit NF4 ({NF4_BYTES * 8:.3f} bits each with double-quantized "
                  f"scales), {fmt_params(n_params - quantized)} ({rest}) upcast to float32")
    else:
        base = n_params * b
        detail = f"{fmt_params(n_params)} parameters in {s.dtype}"
    if not full:
        base += trainable * 4
        detail += f" + {fmt_params(trainable)} LoRA in float32"
    fsdp = s.engine == "fsdp"
    zero3 = s.zero == "zero3" or fsdp
    sharded = base / n_dev if zero3 else base
    host = {}  # what lives in host memory, per rank
    if fsdp:
        # FSDP2 (train/engines.py FSDPEngine): each decoder layer, and the root (embeddings, final norm, output
        # layer), is sharded in the dtype it was loaded in and all-gathered in the compute dtype when it runs; the
        # root stays gathered through forward and backward, a layer from its forward to its backward without
        # reshard_after_forward (else two at a time: the one computing and the one prefetched)
        root = arch.vocab * arch.hidden * (1 if arch.tied or reward else 2) + arch.hidden * (2 if reward else 1)
        gathered = a * (n_params if not s.reshard_after_forward else root + 2 * _layer_params(arch))
        if s.reference_copy:  # the reference's layers are sharded alike, its root is part of the objective's
            gathered += a * (n_params if not s.reshard_after_forward else root)
        weights = gathered + (0.0 if s.offload_params else sharded)
        what = "every layer gathered from forward to backward (reshard_after_forward false)" \
            if not s.reshard_after_forward else "the embeddings, output layer and 2 layers gathered"
        detail += f", sharded over {n_dev} rank{'s' * (n_dev > 1)}"
        if s.offload_params:
            host["weights"] = sharded
            detail += f" in host memory ({gib(sharded)} a rank); on the device {what}"
        else:
            detail += f" + {what}"
    elif zero3 and n_dev > 1:
        # ZeRO-3 gathers one layer's full weights at a time, and prefetches the next
        largest = max(sum(l.params for l in arch.dense_linears), sum(l.params for l in arch.moe_linears),
                      arch.vocab * arch.hidden)
        weights = 2 * largest * b + (0.0 if s.offload_params else sharded)
        detail += f", sharded over {n_dev} ranks"
        if s.offload_params:
            host["weights"] = sharded
            detail += f" in host memory ({gib(sharded)} a rank; offload_param)"
        detail += " (+ 2 gathered layers)"
    else:
        weights = sharded
    p.parts.append(Part("weights", weights, detail))
    if s.reference_copy:
        ref = n_params * b / (n_dev if zero3 else 1)
        what = "a frozen copy of the model: the reference of full-parameter DPO/KTO/GRPO"
        if s.offload_params and zero3:
            host["reference"] = ref
            what += f", sharded in host memory ({gib(ref)} a rank)"
        p.parts.append(Part("reference", 0.0 if "reference" in host else ref, what))

    # gradients and optimizer states
    dtype_name = "float32" if train_bytes == 4 else s.dtype
    state_bytes = optimizer_state_bytes(s.optim, train_bytes)
    moments = {"adamw": "AdamW exp_avg + exp_avg_sq in the parameters' dtype",
               "paged_adamw_32bit": "paged AdamW moments in fp32 (CUDA memory that pages to the host)"}.get(
        s.optim, f"{s.optim}'s block-quantized moments")
    if fsdp:
        # gradients reduce-scattered in fp32 and kept as shards in the parameters' dtype; the run's own AdamW steps
        # the shards: bf16 moments (stochastic rounding) for bf16 weights, no fp32 master (train/optim.py)
        grads = trainable * train_bytes / n_dev
        states = trainable * state_bytes / n_dev
        g_detail = f"{fmt_params(trainable)} trainable in {dtype_name}, sharded over {n_dev}"
        s_detail = (f"{moments}: {state_bytes:.3g} bytes a trainable parameter"
                    f"{' (bf16 with stochastic rounding, no fp32 master)' if train_bytes == 2 else ''} / {n_dev} ranks")
        if s.offload_optimizer:  # CPUOffloadPolicy: the sharded gradients and the step are on the host too
            host["gradients"], host["optimizer"] = grads, states
            g_detail += f", in host memory ({gib(grads)} a rank)"
            s_detail += f", in host memory ({gib(states)} a rank; the step runs there)"
            grads = states = 0.0
    elif s.zero == "none":
        grads = trainable * train_bytes
        states = trainable * state_bytes
        g_detail = f"{fmt_params(trainable)} trainable in {dtype_name}"
        s_detail = moments
        if n_dev > 1:
            grads *= 2
            g_detail += ", twice: DistributedDataParallel's gradient buckets"
    else:
        # fp32 master copy (none when already fp32) + the moments of the fp32 partitions the optimizer steps
        master, fp32_states = (4 if train_bytes < 4 else 0), optimizer_state_bytes(s.optim, 4)
        k = master + fp32_states
        grads = trainable * train_bytes / (n_dev if s.zero in ("zero2", "zero3") else 1)
        states = trainable * k / n_dev
        g_detail = f"{fmt_params(trainable)} trainable" + (f", sharded over {n_dev}" if s.zero != "zero1" else "")
        what = "fp32 master + " if master else ""
        s_detail = f"ZeRO accounting: {k:.3g} bytes a trainable parameter ({what}{moments} of fp32) / {n_dev} ranks"
        if s.offload_optimizer:  # fp32 gradient partitions and the step (DeepSpeedCPUAdam) on the host
            host["gradients"], host["optimizer"] = 4 * trainable / n_dev, states
            grads = _largest_trainable(arch, s) * train_bytes
            g_detail = (f"{fmt_params(trainable)} trainable, reduced into fp32 partitions in host memory "
                        f"({gib(host['gradients'])} a rank); on the device a buffer of the largest parameter")
            s_detail += f", in host memory ({gib(states)} a rank; the step runs there)"
            states = 0.0
    p.parts.append(Part("gradients", grads, g_detail))
    p.parts.append(Part("optimizer", states, s_detail))
    p.host = sum(host.values())

    # activations of one micro-batch
    tokens, rows, per_row = tokens_per_micro_batch(s)
    per_layer = layer_bytes_per_token(arch, s)
    per_moe_layer = layer_bytes_per_token(arch, s, moe=True) if arch.moe_layers else 0.0
    mask_layer, mask_once = mask_bytes(s, a, rows, per_row)
    scores = arch.heads * rows * per_row * per_row  # eager attention: every head's score of every token pair
    eager_masks = 0.0
    if s.attn == "eager":  # fp32 softmax per head, its copy in the compute dtype, the soft-capped scores
        per_score = 4 + (a if a != 4 else 0) + (a if arch.attn_softcap else 0)
        mask_layer += scores * per_score
        # the additive masks (one per kind of layer), in the compute dtype: kept by the layer checkpoints, else
        # alive only while the layers run forward
        eager_masks = arch.mask_kinds * rows * per_row * per_row * a
        mask_once = eager_masks if s.gradient_checkpointing else 0.0
    experts = adapted_experts_bytes(arch, s)  # LoRA's fused-expert weights, per MoE layer (not per token)
    one_layer = max(tokens * per_layer, tokens * per_moe_layer + experts if arch.moe_layers else 0.0) + mask_layer
    backward = tokens * backward_bytes_per_token(arch, s)
    if s.attn == "eager":  # the softmax's backward: the gradients of its output and of its input, both in fp32,
        # where the copy of its output in the compute dtype and the layer's MLP side are freed already
        mlp_side = layer_bytes_per_token(arch, s, moe=not arch.dense_layers, mlp_only=True)
        backward = max(backward, scores * (8 - (a if a != 4 else 0)) - tokens * mlp_side)
    if s.gradient_checkpointing:  # each layer keeps its input; backward recomputes one layer at a time
        layers_saved = arch.layers * tokens * a * arch.hidden
        act_detail = f"{arch.layers} layer inputs x {tokens:,} tokens (checkpointed) + one layer recomputed"
    else:
        layers_saved = tokens * (arch.dense_layers * per_layer + arch.moe_layers * per_moe_layer) \
            + arch.layers * mask_layer + arch.moe_layers * experts
        act_detail = f"{arch.layers} layers x {tokens:,} tokens, {per_layer / 1024:.1f} KiB a token and layer"
    if experts:
        kept = 1 if s.gradient_checkpointing else arch.moe_layers
        act_detail += f"; LoRA-adapted expert weights {kept * experts / GiB:.2f} GiB ({kept} layer{'s' * (kept > 1)})"
    final = mask_once + tokens * (_norm_bytes(arch.hidden, a, full, arch.model_type in GEMMA_NORM) + 4 + 8)
    masks = (1 if s.gradient_checkpointing else arch.layers) * mask_layer + mask_once
    if masks:
        act_detail += f"; attention masks {masks / GiB:.2f} GiB"
    # the fused loss (train/loss.py): the hidden-state gradient kept for backward, chunks of fp32 logits, and with
    # a trainable output layer its fp32 weight gradient (accumulated in place, chunk by chunk)
    vocab_h = arch.vocab * arch.hidden
    rows_per_chunk = min(tokens, max(16, LOGITS_PER_CHUNK // arch.vocab))
    chunk = rows_per_chunk * arch.vocab
    head_grad = 0.0  # the output layer's gradient once backward has passed it
    if reward:
        loss_fwd = loss_bwd = logits = 0.0
    else:
        kept = tokens * a * arch.hidden  # d loss / d hidden of every trained position (at most all of them)
        # the loop's previous fp32 chunk is still referenced while the next one is formed (and, below fp32, the
        # next one's matmul output in the compute dtype before its upcast); soft-capped logits (Gemma-2) are formed
        # from the raw ones through tanh and its square into the capped logits and their slope: five fp32 chunks
        # at once, and the previous chunk's two are still referenced
        if arch.logit_softcap:
            logits = chunk * (20 + (8 if tokens > rows_per_chunk else 0))
        else:
            logits = chunk * ((8 if tokens > rows_per_chunk else 4) + (a if a != 4 else 0))
        loss_fwd = kept + 2 * tokens * a * arch.hidden + logits  # + the final hidden states and their selection
        loss_bwd = 2 * kept
        if full and s.task in ("sft", "pt"):
            loss_fwd = kept + 2 * tokens * a * arch.hidden + 4 * vocab_h + logits
            loss_bwd = 2 * kept + 8 * vocab_h + (a * vocab_h if a != 4 else 0)
            head_grad = a * vocab_h
        elif full:  # token_logps: a trainable head's chunks are recomputed in backward
            loss_bwd += 3 * logits
            head_grad = a * vocab_h
    loss = max(loss_fwd, loss_bwd)
    forward = layers_saved + max(final + loss, eager_masks if not s.gradient_checkpointing else 0.0)
    # backward's first layer (the last one) with every layer's activations still alive; under checkpointing a
    # layer is recomputed beside the checkpoints first
    first = head_grad + layers_saved + mask_once + (one_layer if s.gradient_checkpointing else 0.0) + backward
    p.parts.append(Part("activations", max(forward, first), act_detail))
    p.detail = {"layers": layers_saved, "final": final, "loss_fwd": loss_fwd, "loss_bwd": loss_bwd,
                "one_layer": one_layer, "per_layer_token": per_layer, "mask_layer": mask_layer,
                "mask_once": mask_once, "tokens": tokens, "adapted_experts": experts, "backward": backward,
                "logits": logits}

    # the phases of a step, above weights + optimizer states
    reduce_temp = root_reduce = 0.0
    if fsdp:
        # gradient accumulation (no reduce-scatter before the last micro-batch) keeps every trainable parameter's
        # gradient unsharded, in fp32 (the reduce dtype), from the first micro-batch's backward to the last
        persistent = 4.0 * trainable if s.accumulation > 1 else 0.0
        # each layer's (and finally the root's) gradients leave backward unsharded in the compute dtype and are
        # copied into an fp32 buffer for the reduce-scatter (the root's gathered weights are freed just before)
        layer_trainable = _layer_params(arch) if full else \
            lora_parameter_count(arch, s.lora_rank, s.target_modules) / max(1, arch.layers)
        root = arch.vocab * arch.hidden * (1 if arch.tied else 2)
        reduce_temp = (4 + a) * layer_trainable
        root_reduce = 4 * root if full else 0.0
    else:
        persistent = grads if (s.accumulation > 1 or s.zero != "none") else 0.0
        if n_dev > 1 and s.zero == "none" and s.accumulation == 1:
            persistent = grads / 2  # DDP's buckets stay; the parameters' own gradients come and go
    local = trainable / (n_dev if fsdp else 1)  # what this rank's AdamW steps
    if (s.zero != "none" and not fsdp) or s.offload_optimizer:
        step_temp = 0.0  # DeepSpeed's own step; offloaded states step on the host
    elif s.optim != "adamw":  # torchao's and bitsandbytes' step a parameter at a time (an fp32 temporary at most)
        step_temp = 4.0 * _largest_trainable(arch, s)
    elif full and s.dtype == "bfloat16":  # RoundingAdamW: fused in place; small parameters copied into a bucket
        step_temp = 4 * b * min(local, ROUNDING_BUCKET)
    else:  # torch's AdamW: foreach on a GPU (a temporary of every gradient), one parameter at a time on the CPU
        step_temp = (local if s.device != "cpu" else _largest_trainable(arch, s)) * train_bytes
    tied_temp = a * vocab_h if (full and arch.tied) else 0.0
    p.phases = {"forward and loss": persistent + forward,
                "recomputing a layer" if s.gradient_checkpointing else "start of backward": persistent + first,
                "end of backward": max(grads, persistent) + tied_temp
                + max(one_layer + backward + reduce_temp + (head_grad if fsdp else 0.0), root_reduce),
                "optimizer step": max(grads, persistent) + step_temp}
    if s.task == "grpo" and s.generation_sequences:
        gen = generation_bytes(arch, s)
        p.phases["generation"] = persistent + gen
        p.parts.append(Part("generation", gen, f"KV cache of {s.generation_sequences} sequences x "
                                               f"({s.prompt_len} + {s.completion_len}) tokens, prefill"))
    if s.device == "cuda":
        p.parts.append(Part("workspace", CUBLAS_WORKSPACE, "cuBLAS and cuBLASLt workspaces"))
    p.peak = p.part("weights") + p.part("reference") + p.part("workspace") + states + max(p.phases.values())
    if s.method == "qlora":
        p.notes.append("QLoRA runs the residual stream in float32 (peft upcasts embeddings and norms)")
        if arch.experts:
            p.notes.append("QLoRA quantizes nn.Linear layers only: the fused experts stay unquantized, in float32")
    return p


def _layer_params(arch: Arch) -> int:
    """Parameters of the largest decoder layer (dense or mixture-of-experts), norms included."""
    dense = sum(lin.params for lin in arch.dense_linears) if arch.dense_layers else 0
    moe = sum(lin.params for lin in arch.moe_linears) if arch.moe_layers else 0
    return max(dense, moe) + arch.layer_norm_params


def _largest_trainable(arch: Arch, s: Setup) -> int:
    """CPU's AdamW steps one parameter at a time: its temporary is the largest trainable one."""
    if s.method != "full":
        return max(s.lora_rank * (lin.fan_in + lin.fan_out) * lin.count for lin in arch.dense_linears)
    return max([arch.vocab * arch.hidden] + [lin.fan_in * lin.fan_out * lin.count
                                             for lin in arch.dense_linears + arch.moe_linears])


def generation_bytes(arch: Arch, s: Setup) -> float:
    """GRPO rollouts with the policy (rollout/hf.py): the KV cache of every sequence decoded together at full length
    (keys and values of every layer's kv heads; growing it copies one layer's), the prompt's prefill through one
    layer's MLP, and the last position's logits."""
    a = 4 if s.method == "qlora" else DTYPE_BYTES[s.dtype]
    n, length = s.generation_sequences, s.prompt_len + s.completion_len
    kv = (arch.layers + 1) * (arch.k_dim + arch.v_dim) * a * n * length  # + one layer's copy as the cache grows
    prefill = 3 * a * n * s.prompt_len * max(arch.intermediate, arch.moe_intermediate * arch.experts_per_token)
    return kv + prefill + n * arch.vocab * (a + 4)


# -- sizes --------------------------------------------------------------------------------------------------------
# a card's memory as it is sold: an "80GB" H100 has 80 GiB (79.6 GiB usable), a "24GB" RTX 4090 24 GiB
_UNITS = {"": GiB, "b": 1, **{f"{p}{b}": 1 << 10 * i for i, p in enumerate("kmgt", 1) for b in ("", "b", "ib")}}


def parse_size(text: str) -> float | None:
    """Bytes of a card's memory: '80GB', '80GiB' and '80' are 80 x 2^30, '1.5TB' 1.5 x 2^40; None when it is not
    a size."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        return None
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    return value if value > 0 else None


def gib(value: float) -> str:
    return f"{value / GiB:,.2f} GiB"


def fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def with_setup(p: MemoryPlan, **changes) -> MemoryPlan:
    """The same model planned with other options (what a hint compares)."""
    return plan(p.arch, replace(p.setup, **changes), p.model, p.capacity, p.params, p.vision)

