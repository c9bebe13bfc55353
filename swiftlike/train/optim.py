"""AdamW for bf16 weights with stochastic rounding: one fused, compiled kernel a parameter (or a bucket of small ones).

A bf16 weight near 1 moves in steps of 2^-7: plain bf16 AdamW rounds every smaller update away, so small learning
rates stall. Here each step is computed in fp32 from the bf16 weight, gradient and moments, the moments are stored
back in bf16 (rounded to nearest) and the new weight is rounded to bf16 stochastically: up with probability equal
to its distance from the bf16 value below, in units of that bf16 step, so every update is kept in expectation.
Weights and moments stay bf16 (8 bytes a parameter with its gradient, where fp32 master weights would take 16).

This is the arithmetic of torchao's `_AdamW(bf16_stochastic_round=True)`, which it replaces. torchao builds a new
torch.compile wrapper for every parameter at every step and compiles one graph per parameter shape; here one
graph, compiled once with a dynamic length, takes flat tensors, with the learning rate and the bias corrections as
tensors (a new value is not a new graph). Each call costs host time whatever its length (guards, wrappers,
launches: 275 us on an H100's host, 2026-11-27, where a step of Qwen3-0.6B's 310 parameters took 100 ms, a third
of a full fine-tuning step). So parameters below `ALONE` values (per device type) are stepped together:
concatenated, in order, into buckets of up to `BUCKET` values, one call a bucket, then copied back (weights and
moments). That moves their bytes three times instead of once, which costs less than the calls it saves below
`ALONE`; larger parameters are stepped in place, one call each. Measured with benchmarks/optimizer_step.py: see
docs/benchmarks.md.

The random bits are not drawn from a generator: they are a hash of each value's position in its bucket, the
bucket's first parameter's index and the step (and the run's seed), computed inside the same kernel. So every
data-parallel rank rounds alike (the replicas stay equal whatever else drew random numbers), a resumed run rounds
as the uninterrupted one would, and no random tensor is written to memory. Under FSDP2 (parameters sharded as
DTensors) each rank steps its own shards (positions are its buckets' own).
"""
from __future__ import annotations

import sys

import torch

LOW_BITS = 16  # an fp32 value's bits below bf16's mantissa
# parameters of at least this many values are stepped in place, one call each: where a call's host time (~80 us on a
# 2-core CPU, ~275 us on an H100's host) is less than moving their bytes twice more (~15 GB/s there, ~3 TB/s here)
ALONE = {"cpu": 1 << 16, "cuda": 1 << 23}  # (other devices: as CUDA)
BUCKET = 1 << 25  # smaller ones are stepped together, up to this many values a call (4 x 64 MB of bf16 copies)
_MASK = 0x7FFFFFFF  # the hash works on 31-bit values in int64: its products stay below 2^62 (no overflow)


class RoundingAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay). bf16 parameters: fp32 arithmetic, bf16 moments, stochastically rounded
    weights; others (a module a model keeps in fp32) get the same update without rounding. The state per parameter
    is torch's AdamW's (`step`, `exp_avg`, `exp_avg_sq`), so checkpoints written with torch's or torchao's AdamW
    load. `seed` varies the rounding's random bits between runs."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01,
                 seed: int = 0):
        if not (float(lr) >= 0 and eps >= 0 and all(0.0 <= b < 1.0 for b in betas)):
            raise ValueError(f"RoundingAdamW: invalid lr {lr}, eps {eps} or betas {betas}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.seed = seed

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        from torch.distributed.tensor import DTensor

        for g_index, group in enumerate(self.param_groups):
            beta1, beta2 = group["betas"]
            lr = torch.tensor(float(group["lr"]), dtype=torch.float32)
            hyper = (beta1, beta2, group["eps"], group["weight_decay"])
            items = []  # (p_index, step, (weight, gradient, moment 1, moment 2)) of the parameters to step
            for p_index, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                tensors = (p, p.grad, state["exp_avg"], state["exp_avg_sq"])
                if isinstance(p, DTensor):  # FSDP2: its gradient and moments are DTensors too; step this rank's shard
                    tensors = tuple(t.to_local() for t in tensors)
                if not all(t.is_contiguous() for t in tensors):
                    raise ValueError(f"RoundingAdamW needs contiguous parameters and gradients ({tuple(p.shape)})")
                if tensors[0].numel():
                    items.append((p_index, int(state["step"]), tensors))
            corrections = {}  # step -> the bias corrections as tensors (every parameter shares one step, mostly)
            for bucket in _buckets(items):
                p_index, step, _ = bucket[0]
                if step not in corrections:
                    corrections[step] = (torch.tensor(1 - beta1 ** step), torch.tensor((1 - beta2 ** step) ** 0.5))
                seed = torch.tensor(_mix(self.seed, g_index, p_index, step))
                _step_bucket([tensors for _, _, tensors in bucket], lr, *corrections[step], seed, *hyper)
        return loss


def _buckets(items: list) -> list[list]:
    """`items` (p_index, step, tensors) in buckets stepped by one call each, in order: a parameter of `ALONE` values
    (its device's) or more alone; smaller ones of the same step, device and dtypes together, up to `BUCKET` values."""
    buckets, open_ = [], {}
    for item in items:
        _, step, tensors = item
        n = tensors[0].numel()
        if n >= ALONE.get(tensors[0].device.type, ALONE["cuda"]):
            buckets.append([item])
            continue
        key = (step, tensors[0].device, *(t.dtype for t in tensors))
        bucket = open_.get(key)
        if bucket is None or bucket[0] + n > BUCKET:
            bucket = open_[key] = [0, []]
            buckets.append(bucket[1])
        bucket[0] += n
        bucket[1].append(item)
    return buckets


def _step_bucket(members: list[tuple], lr, correction1, root_correction2, seed, beta1, beta2, eps, decay) -> None:
    """One compiled AdamW call for the parameters in `members` (their (weight, gradient, moment 1, moment 2)): the
    tensors themselves when there is one, else their concatenation, whose new weights and moments are copied back."""
    weight = members[0][0]
    kernel = _kernel(weight.device)
    scalars = (lr, correction1, root_correction2, seed, beta1, beta2, eps, decay, weight.dtype == torch.bfloat16)
    if len(members) == 1:
        kernel(*(t.view(-1) for t in members[0]), *scalars)
        return
    flat = [torch.cat([m[i].view(-1) for m in members]) for i in range(4)]
    kernel(*flat, *scalars)
    sizes = [m[0].numel() for m in members]
    for i in (0, 2, 3):  # the weights and the moments (the gradients are only read)
        torch._foreach_copy_([m[i].view(-1) for m in members], list(flat[i].split(sizes)))


def adamw_update(p, g, m, v, lr, correction1, root_correction2, seed, beta1: float, beta2: float, eps: float,
                 decay: float, rounding: bool) -> None:
    """One AdamW step of flat `p` in place (moments `m`, `v` too), computed in fp32; with `rounding`, `p`'s new
    value is rounded to bf16 stochastically with bits hashed from `seed` and each value's position."""
    weight = p.float() * (1 - lr * decay)
    grad = g.float()
    mean = m.float().lerp(grad, 1 - beta1)
    square = v.float().lerp(grad * grad, 1 - beta2)
    m.copy_(mean)
    v.copy_(square)
    weight = weight - (lr / correction1) * mean / (square.sqrt() / root_correction2 + eps)
    if rounding:  # random low bits added (a carry moves the magnitude one bf16 step up), then cleared
        bits = (weight.view(torch.int32) + random_bits(weight.numel(), seed, weight.device)) & -(1 << LOW_BITS)
        weight = bits.view(torch.float32)
    p.copy_(weight)


def random_bits(n: int, seed: torch.Tensor, device) -> torch.Tensor:
    """LOW_BITS uniform random bits for each of n positions (int32), a hash of (position, seed): an integer mixer
    (xor-shift and multiply rounds) on 31-bit values."""
    x = (torch.arange(n, device=device, dtype=torch.int64) + seed * 0x3C6EF35F) & _MASK
    for shift, factor in ((16, 0x45D9F3B), (15, 0x2C1B3C6D), (13, 0x297A2D39)):
        x = ((x ^ (x >> shift)) * factor) & _MASK
    x = x ^ (x >> 16)
    return (x & ((1 << LOW_BITS) - 1)).to(torch.int32)


def _mix(*parts: int) -> int:
    """A 31-bit seed from integers, alike in every process."""
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + part + 1) % _MASK
    return seed


_KERNELS: dict = {}


def _kernel(device: torch.device):
    """`adamw_update` compiled (one graph for every length, fused into one kernel) on CPU and CUDA, eager elsewhere
    and where compiling fails (a machine without a C++ compiler: said once, then the eager function)."""
    if device.type not in _KERNELS:
        if device.type in ("cpu", "cuda"):
            _KERNELS[device.type] = _CompiledOrEager(torch.compile(adamw_update, fullgraph=True, dynamic=True))
        else:
            _KERNELS[device.type] = adamw_update
    return _KERNELS[device.type]


class _CompiledOrEager:
    def __init__(self, compiled):
        self.compiled = compiled

    def __call__(self, *args):
        if self.compiled is None:
            return adamw_update(*args)
        try:
            return self.compiled(*args)
        except Exception as e:  # compiling failed before anything ran: the same step, eagerly, from now on
            self.compiled = None
            print(f"[wb] warning: the optimizer step could not be compiled ({type(e).__name__}: "
                  f"{str(e).splitlines()[0] if str(e) else ''}); it runs eagerly, several times slower",
                  file=sys.stderr, flush=True)
            return adamw_update(*args)
