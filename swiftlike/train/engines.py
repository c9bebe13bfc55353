"""How a training step runs across processes: DDP (and the single process), DeepSpeed ZeRO-1/2/3, FSDP2.

An engine owns what differs between them: wrapping the objective, building the optimizer at the right moment
(FSDP2 replaces parameters, DeepSpeed wraps the optimizer), backward and gradient synchronisation per
micro-batch, the optimizer step, and gathering full weights and optimizer state for a checkpoint. The loop
(train/trainer.py) is the same for all of them; the loss stays token-normalised over every micro-batch and rank.

Presets live in swiftlike/assets/configs/ (zero*.json, fsdp_*.json); a user's own JSON file works too.
Every "auto" in a DeepSpeed config is filled from our options here, before deepspeed.initialize.
"""
from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .. import accel
from ..errors import UserError, one_line

PRESETS = Path(__file__).resolve().parents[1] / "assets" / "configs"
DEEPSPEED_PRESETS = ("zero1", "zero2", "zero3", "zero2_offload", "zero3_offload")
FSDP_PRESETS = ("full_shard", "hybrid_shard", "full_shard_offload")
FSDP_KEYS = {"sharding": ("full_shard", "hybrid_shard"), "reshard_after_forward": (True, False),
             "cpu_offload": (True, False)}
# what our own optimizer and scheduler do; a DeepSpeed config may not build its own
_FOREIGN_SECTIONS = ("optimizer", "scheduler")


def _read_json(flag: str, value: str, preset: Path | None) -> dict:
    path = preset if preset is not None else Path(value)
    if not path.is_file():
        raise UserError(f"{flag} {value}: no such preset or file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{flag} {value}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{flag} {value}: a JSON object is expected, got {type(data).__name__}")
    return data


def _named_or_file(flag: str, value: str, names: tuple[str, ...], prefix: str) -> dict:
    if value in names:
        return _read_json(flag, value, PRESETS / f"{prefix}{value}.json")
    if not value.endswith(".json") and "/" not in value:
        raise UserError(f"{flag} {value}: unknown preset; choose one of {', '.join(names)} or give a .json file")
    return _read_json(flag, value, None)


def deepspeed_config(value: str) -> dict:
    """A --deepspeed preset or file, checked: a ZeRO stage we run, no optimizer/scheduler of its own."""
    config = _named_or_file("--deepspeed", value, DEEPSPEED_PRESETS, "")
    for section in _FOREIGN_SECTIONS:
        if section in config:
            raise UserError(f"--deepspeed {value}: remove its {section!r} section; the run's own AdamW and "
                            "--lr_scheduler_type are used (set --learning_rate, --weight_decay, --warmup_steps)")
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise UserError(f"--deepspeed {value}: zero_optimization must be an object such as {{\"stage\": 2}}, got "
                        f"{zero!r}")
    for key in ("offload_param", "offload_optimizer"):
        if not isinstance(zero.get(key, {}), dict):
            raise UserError(f"--deepspeed {value}: zero_optimization.{key} must be an object such as "
                            f"{{\"device\": \"cpu\"}}, got {zero[key]!r}")
    if zero.get("stage", 0) not in (0, 1, 2, 3):
        raise UserError(f"--deepspeed {value}: zero_optimization.stage must be 0, 1, 2 or 3, got {zero['stage']!r}")
    if zero.get("offload_param", {}).get("device", "none") not in ("none", None) and zero.get("stage") != 3:
        raise UserError(f"--deepspeed {value}: offload_param needs ZeRO stage 3 (it has stage {zero.get('stage')})")
    if zero.get("offload_param", {}).get("device") == "nvme" or zero.get("offload_optimizer", {}).get("device") \
            == "nvme":
        raise UserError(f"--deepspeed {value}: NVMe offload is not supported; use device 'cpu'")
    return config


def fsdp_config(value: str) -> dict:
    """A --fsdp preset or file: {sharding: full_shard|hybrid_shard, reshard_after_forward, cpu_offload}."""
    config = _named_or_file("--fsdp", value, FSDP_PRESETS, "fsdp_")
    for key, allowed in FSDP_KEYS.items():
        if key in config and config[key] not in allowed:
            raise UserError(f"--fsdp {value}: {key} must be one of {', '.join(map(str, allowed))}, got {config[key]!r}")
    unknown = sorted(set(config) - set(FSDP_KEYS))
    if unknown:
        raise UserError(f"--fsdp {value}: unknown key {unknown[0]!r} (known: {', '.join(FSDP_KEYS)})")
    return {"sharding": "full_shard", "reshard_after_forward": True, "cpu_offload": False, **config}


def zero_stage(config: dict | None) -> int:
    return int((config or {}).get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(config: dict) -> bool:
    """Whether a DeepSpeed config keeps the optimizer states in host memory (DeepSpeed's CPU Adam steps them)."""
    return config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device") == "cpu"


def fill_deepspeed_config(config: dict, *, micro_batch: int, accumulation: int, max_grad_norm: float,
                          dtype: torch.dtype, hidden_size: int, optim: str = "adamw") -> dict:
    """The config with every "auto" replaced by the run's value; an explicit value that contradicts the run's
    options is refused (DeepSpeed would otherwise train another batch size than the one asked for)."""
    config = json.loads(json.dumps(config))
    ours = {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": accumulation,
            "train_batch_size": micro_batch * accumulation * accel.world_size(), "gradient_clipping": max_grad_norm}
    for key, value in ours.items():
        given = config.get(key, "auto")
        if given != "auto" and float(given) != float(value):
            raise UserError(f"--deepspeed: {key} is {given} in the config but {value} from this run's options; "
                            "set it to \"auto\" (or match the options)")
        config[key] = value
    for name, wanted in (("bf16", dtype == torch.bfloat16), ("fp16", dtype == torch.float16)):
        section = config.setdefault(name, {})
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = wanted
        elif bool(section["enabled"]) != wanted:
            raise UserError(f"--deepspeed: {name}.enabled is {section['enabled']} in the config but the run's dtype "
                            f"is {str(dtype).replace('torch.', '')}; set it to \"auto\" or choose --torch_dtype")
    zero = config.setdefault("zero_optimization", {})
    sizes = {"reduce_bucket_size": hidden_size * hidden_size, "allgather_bucket_size": hidden_size * hidden_size,
             "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
             "stage3_param_persistence_threshold": 10 * hidden_size}
    for key, value in sizes.items():
        if zero.get(key) == "auto":
            zero[key] = value
    if offloads_optimizer(config) and accel.device_type() == "cpu":
        config["zero_force_ds_cpu_optimizer"] = False  # on a CPU host the states are already in CPU memory
    if optim != "adamw":  # DeepSpeed names the optimizers its ZeRO was tested with; --optim's step fp32 partitions
        config.setdefault("zero_allow_untested_optimizer", True)
    left = _autos(config)
    if left:
        raise UserError(f"--deepspeed: {left[0]} is \"auto\" but swiftlike has no value for it; give one")
    return config


def _autos(node, path: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _autos(v, f"{path}.{k}" if path else k)]
    return [path] if node == "auto" else []


def zero3_loading(config: dict | None):
    """While loading weights under ZeRO-3, transformers builds the model inside deepspeed.zero.Init, so no rank
    ever holds all of it: the returned object must stay alive as long as the model is trained."""
    if zero_stage(config) != 3:
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(config)


def numel(p: torch.Tensor) -> int:
    """Parameter count, also of a ZeRO-3 partitioned parameter (whose local tensor is empty)."""
    return int(getattr(p, "ds_numel", p.numel()))


def _prefix_of(root: torch.nn.Module, model: torch.nn.Module) -> str:
    for name, module in root.named_modules():
        if module is model:
            return f"{name}." if name else ""
    raise ValueError("the model is not part of the objective")


def _model_weights(state: dict | None, root: torch.nn.Module, model: torch.nn.Module) -> dict | None:
    """The model's part of the objective's gathered state dict, under the model's own names; a tied weight
    (lm_head sharing the embeddings) is kept once, as save_pretrained writes it."""
    if state is None:
        return None
    prefix, seen, aliases = _prefix_of(root, model), set(), set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            aliases.add(name)
        seen.add(id(p))
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and k[len(prefix):] not in aliases}


@dataclass
class EngineSettings:
    learning_rate: float
    weight_decay: float
    max_grad_norm: float
    gradient_accumulation_steps: int
    part_lr: dict = field(default_factory=dict)  # a vision-language model's "vit" / "aligner" learning rates
    seed: int = 0  # the stochastic rounding's random bits (train/optim.py)
    lora_plus_ratio: float | None = None  # LoRA+: the B matrices' learning rate over their part's
    optim: str = "adamw"  # --optim (OPTIMIZERS)
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8


LORA_B = (".lora_B.", ".lora_embedding_B.")  # PEFT's names of the B matrices (LoRA+ raises their learning rate)


def param_groups(module: torch.nn.Module, s: EngineSettings) -> list[dict]:
    """The trainable parameters grouped by learning rate: the vision encoder's (--vit_lr) and the merger's
    (--aligner_lr) where given, the run's elsewhere (its group first: the one the logs show); LoRA+ multiplies
    the B matrices' by --lora_plus_ratio."""
    from ..models.loader import vision_part

    groups: dict[float, list] = {s.learning_rate: []}
    for name, p in module.named_parameters():
        if p.requires_grad:
            lr = s.part_lr.get(vision_part(name), s.learning_rate)
            if s.lora_plus_ratio and any(part in name for part in LORA_B):
                lr *= s.lora_plus_ratio
            groups.setdefault(lr, []).append(p)
    return [{"params": ps, "lr": lr} for lr, ps in groups.items() if ps]


# --optim (config.py lists the same names as its choices): the optimizer's library and class. 8-bit and 4-bit AdamW
# keep the moments block-quantized (2 or 1 bytes a parameter for both, where AdamW takes 8 in fp32); paged ones keep
# them in CUDA unified memory, paged to the host under memory pressure (bitsandbytes; on a CPU they step unpaged)
OPTIMIZERS = {"adamw": ("torch", "AdamW"), "adamw_8bit": ("torchao", "AdamW8bit"),
              "adamw_4bit": ("torchao", "AdamW4bit"), "paged_adamw_8bit": ("bitsandbytes", "PagedAdamW8bit"),
              "paged_adamw_32bit": ("bitsandbytes", "PagedAdamW32bit")}


def paged_bf16_error(optim: str) -> UserError:
    return UserError(f"--optim {optim} rounds bf16 weights to nearest, which loses every update smaller than a bf16 "
                     "step (small learning rates stall); for full training in bf16 use --optim adamw or adamw_8bit "
                     "(stochastic rounding), --deepspeed (fp32 master weights), or --torch_dtype float32")


FUSED_ADAMW_DEVICES = ("cpu", "cuda", "xpu", "mps")  # where torch has a fused AdamW kernel


def fused_kernel(groups: list[dict]) -> dict:
    """torch's fused AdamW (one kernel for every parameter's update) where every parameter lives on a device with
    one: the same update within float rounding (2e-7 after 20 steps), 25 ms a step against 136 ms for the default
    multi-tensor (foreach) one, 44M parameters on the 2-core CPU; on CUDA it is transformers' default optimizer."""
    devices = {p.device.type for g in groups for p in g["params"]}
    return {"fused": True} if devices and devices <= set(FUSED_ADAMW_DEVICES) else {}


def make_optimizer(groups: list[dict], s: EngineSettings, engine: str = "ddp"):
    """The --optim optimizer over the parameter groups. For bf16 trainable parameters (full training in bf16) AdamW
    rounds stochastically (train/optim.py), and so do torchao's 8-bit and 4-bit AdamW (their
    bf16_stochastic_round); the paged optimizers would round to nearest, so they are refused there. Under DeepSpeed
    the optimizer steps ZeRO's flat fp32 partitions, whose lengths are rarely whole blocks of torchao's quantized
    moments (it would keep those in fp32): adamw_8bit is bitsandbytes' AdamW8bit there, which has no such rule.

    A bf16 weight near 1 moves in steps of 2^-7: plain bf16 AdamW rounds every smaller update away, so small
    learning rates stall (200 steps of 1e-4 leave such a weight at exactly 1.0; tests/test_engines_bf16.py).
    Stochastic rounding keeps each update's expected value (the same 200 steps: 0.9806 for 0.98), with the moments
    in bf16 too — 8 bytes per parameter, where fp32 master weights would take 16. DeepSpeed keeps fp32 master
    weights of its own and hands the optimizer those; under FSDP2 each rank rounds its own shard."""
    import importlib

    library, name = OPTIMIZERS[s.optim]
    if engine == "deepspeed" and s.optim == "adamw_8bit":
        library, name = "bitsandbytes", "AdamW8bit"
    rounding = engine != "deepspeed" and any(p.dtype == torch.bfloat16 for g in groups for p in g["params"])
    kwargs = dict(lr=s.learning_rate, betas=s.betas, eps=s.eps, weight_decay=s.weight_decay)
    if library == "torch":
        if rounding:
            from .optim import RoundingAdamW

            if accel.is_main_process():
                print("[wb] optimizer: AdamW with bf16 stochastic rounding: updates smaller than a bf16 step are kept "
                      "in expectation", flush=True)
            return RoundingAdamW(groups, seed=s.seed, **kwargs)
        return torch.optim.AdamW(groups, **kwargs, **fused_kernel(groups))
    if library == "bitsandbytes" and rounding:
        raise paged_bf16_error(s.optim)
    try:
        module = importlib.import_module("torchao.optim" if library == "torchao" else "bitsandbytes.optim")
    except ImportError:
        extra = "quant" if library == "torchao" else "qlora"
        raise UserError(f"--optim {s.optim} needs {library}: pip install 'swiftlike[{extra}]'") from None
    if library == "torchao":
        kwargs["bf16_stochastic_round"] = rounding
    if accel.is_main_process():
        owner = f"{library}'" if library.endswith("s") else f"{library}'s"
        print(f"[wb] optimizer: {owner} {name}" + (" with bf16 stochastic rounding" if rounding else ""), flush=True)
    return getattr(module, name)(groups, **kwargs)


class DDPEngine:
    """One process, or DistributedDataParallel over torchrun's processes."""

    name = "ddp"

    def __init__(self, objective: torch.nn.Module, model: torch.nn.Module, s: EngineSettings):
        self.objective, self.model, self.s = objective, model, s
        self.distributed = accel.world_size() > 1
        self.module = self.wrap(objective)
        self.optimizer = make_optimizer(param_groups(self.module, s), s, self.name)

    def wrap(self, objective):
        if not self.distributed:
            return objective
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(objective)

    def forward_backward(self, batch: dict, scale: torch.Tensor, last: bool) -> tuple[torch.Tensor, dict]:
        """Forward one micro-batch and add its gradient, scaled; ranks synchronise on the last one."""
        with self.module.no_sync() if self.distributed and not last else nullcontext():
            part, _, metrics = self.module(**batch)
            (part * scale.to(part.device, part.dtype)).backward()
        return part, metrics

    def step(self) -> float:
        """Clip, step the optimizer, clear gradients; the gradient norm before clipping (0 without clipping)."""
        norm = 0.0
        if self.s.max_grad_norm > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            norm = float(_full(torch.nn.utils.clip_grad_norm_(params, self.s.max_grad_norm)))
        with self._rounding_bits():
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def _rounding_bits(self):
        """torchao's stochastic rounding draws from torch's global generator, which the processes do not draw from
        alike (NEFTune's noise has each one's token count): its step runs with the generator seeded from the run's
        seed and the step, so DDP replicas round alike and stay equal, and a resumed run rounds as the
        uninterrupted one (FSDP2's ranks, each on its own shards, add their rank)."""
        if not getattr(self.optimizer, "bf16_stochastic_round", False):
            return nullcontext()
        first = next(iter(self.optimizer.state.values()), {})
        step = int(first.get("step", 0))
        return accel.seeded((self.s.seed * 1_000_003 + step) * 1_009 + (accel.rank() if self.name == "fsdp" else 0))

    def model_state_dict(self) -> dict | None:
        """Full weights to save (collective), or None: the model's own parameters are complete on rank 0."""
        return None

    def optimizer_state(self) -> dict | None:
        """The optimizer state to put in trainer_state.pt (collective), None where the engine saves its own."""
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict | None, ckpt: Path) -> None:
        if not state or "param_groups" not in state:  # (DeepSpeed keeps its own in deepspeed/; FSDP's is sharded)
            raise UserError(f"{ckpt}: its optimizer state was saved by another engine ({_engine_of(ckpt)}); resume "
                            "it with the engine it was trained with")
        try:
            self.optimizer.load_state_dict(state)
        except (ValueError, KeyError) as e:
            raise UserError(f"{ckpt}: its optimizer state does not fit this run ({one_line(e)}); resume it with the "
                            "engine and options it was trained with") from None

    def save_engine_state(self, directory: Path) -> None:
        """Anything every rank writes itself (collective); the directory exists on every rank."""

    def outside_forward(self):
        """A context in which the model generates outside the objective's forward: the engine makes the weights
        it shards whole there, where its own hooks do not."""
        return nullcontext()

    def call(self, method: str, *args, **kwargs):
        """One of the objective's no-grad passes outside a training step (reference or sampling-policy
        log-probs), with the weights it reads made available."""
        with self.outside_forward():
            return getattr(self.objective, method)(*args, **kwargs)

    def release(self) -> None:
        """Training is over: free what only the optimizer needed."""
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer.state.clear()


def _full(value):
    """A DTensor's full value (FSDP2 gradient norms), or the value."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


class DeepSpeedEngine(DDPEngine):
    """DeepSpeed ZeRO-1/2/3 with our AdamW as its client optimizer (no JIT-built DeepSpeed optimizer)."""

    name = "deepspeed"

    def __init__(self, objective, model, s: EngineSettings, config: dict):
        self.config = config
        self.stage = zero_stage(config)
        super().__init__(objective, model, s)
        import deepspeed

        if offloads_optimizer(config) and accel.device_type() != "cpu":  # offloaded states step on the CPU:
            # DeepSpeed's fast Adam
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            self.optimizer = DeepSpeedCPUAdam(param_groups(objective, s), lr=s.learning_rate, betas=s.betas,
                                              eps=s.eps, weight_decay=s.weight_decay, adamw_mode=True)
        self.engine, self.wrapped, _, _ = deepspeed.initialize(model=objective, optimizer=self.optimizer,
                                                               config=config)
        self.module = self.engine

    def wrap(self, objective):
        return objective  # deepspeed.initialize wraps it once the optimizer exists

    def forward_backward(self, batch, scale, last):
        # the boundary is ours to say: a step may hold more micro-batches than --gradient_accumulation_steps (the
        # pieces of a text split while streaming: Trainer.next_batches), and DeepSpeed would count them as steps
        self.engine.set_gradient_accumulation_boundary(last)
        part, _, metrics = self.engine(**batch)
        # the engine divides by its accumulation steps; our scale already normalises over every micro-batch
        self.engine.backward(part * scale.to(part.device, part.dtype) * self.s.gradient_accumulation_steps)
        self.engine.step()  # only the accumulation boundary steps the optimizer (and clips)
        return part, metrics

    def step(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None and self.s.max_grad_norm > 0 else 0.0

    def model_state_dict(self):
        if hasattr(self.model, "peft_config"):  # adapters from the optimizer's fp32 master, as the other engines
            return _model_weights(self._fp32_trainable(), self.objective, self.model)  # save them (not bf16 copies)
        if self.stage != 3:
            return None
        return _model_weights(self.engine._zero3_consolidated_16bit_state_dict(), self.objective, self.model)

    def _fp32_trainable(self) -> dict:
        """Every trainable weight whole, in fp32 (a collective: every rank calls it). Under bf16 the module holds
        rounded copies; the optimizer's fp32 master is what training reached."""
        from deepspeed.utils import safe_get_full_fp32_param

        state = {}
        for name, p in self.objective.named_parameters():
            if p.requires_grad:
                full = safe_get_full_fp32_param(p)
                state[name] = (p.detach() if full is None else full).float().cpu()
        return state

    def optimizer_state(self):
        return None

    def save_engine_state(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory), tag="deepspeed", save_latest=False,
                                    exclude_frozen_parameters=hasattr(self.model, "peft_config"))
        if accel.is_main_process():  # its scripts to rebuild weights from shards: the checkpoint has them whole
            for script in ("zero_to_fp32.py", "zero_to_torch.py"):
                (directory / script).unlink(missing_ok=True)

    def load_optimizer_state(self, state, ckpt: Path) -> None:
        if not (Path(ckpt) / "deepspeed").is_dir():
            raise UserError(f"{ckpt}: not a DeepSpeed checkpoint (no deepspeed/ folder); resume it with the engine "
                            "it was trained with")
        try:
            self.engine.load_checkpoint(str(ckpt), tag="deepspeed", load_module_strict=False,
                                        load_optimizer_states=True, load_lr_scheduler_states=False)
        except Exception as e:  # another ZeRO stage or number of processes: DeepSpeed asserts or raises its own
            why = one_line(e) if str(e).strip() else "its shards do not fit"
            raise UserError(f"{ckpt}: DeepSpeed cannot resume this checkpoint here ({why}); resume it with the ZeRO "
                            f"stage and the number of processes it was trained with ({_engine_of(ckpt)})") from None

    def call(self, method: str, *args, **kwargs):
        """Under ZeRO-3 these passes read the output layer's weight outside its module's forward (the fused loss);
        they run as the engine's forward, where DeepSpeed gathers every partitioned weight that is read."""
        if self.stage != 3:
            return super().call(method, *args, **kwargs)
        self.objective.forward = getattr(self.objective, method)  # for this call only
        try:
            return self.engine(*args, **kwargs)
        finally:
            del self.objective.forward

    def release(self) -> None:
        self.engine.zero_grad()


class FSDPEngine(DDPEngine):
    """FSDP2: every decoder layer sharded (fully_shard), then the objective as the root (embeddings, norm, head)."""

    name = "fsdp"

    def __init__(self, objective, model, s: EngineSettings, config: dict, dtype: torch.dtype):
        self.config, self.dtype = config, dtype
        super().__init__(objective, model, s)

    def wrap(self, objective):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        world, kind = accel.world_size(), accel.device_type()
        if self.config["sharding"] == "hybrid_shard":  # shard inside a node, replicate across nodes
            local = accel.local_world_size()
            mesh = init_device_mesh(kind, (world // local, local), mesh_dim_names=("replicate", "shard"))
        else:
            mesh = init_device_mesh(kind, (world,))
        offload = self.config["cpu_offload"] and kind != "cpu"  # on a CPU host everything is in CPU memory already
        kwargs = dict(mesh=mesh, reshard_after_forward=self.config["reshard_after_forward"],
                      offload_policy=CPUOffloadPolicy() if offload else OffloadPolicy())
        if self.dtype != torch.float32:  # compute in the run's dtype, reduce gradients in fp32
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=self.dtype, reduce_dtype=torch.float32)
        for layer in decoder_layers(objective):
            fully_shard(layer, **kwargs)
        fully_shard(objective, **kwargs)
        # the objective is the root even when a layer runs first (generation outside its forward)
        objective._get_fsdp_state()._lazy_init()
        return objective

    def forward_backward(self, batch, scale, last):
        self.module.set_requires_gradient_sync(last)
        part, _, metrics = self.module(**batch)
        (part * scale.to(part.device, part.dtype)).backward()
        return part, metrics

    @contextmanager
    def outside_forward(self):
        """The root's own weights (embeddings, final norm, output layer) whole; the decoder layers gather theirs
        in their forward as always."""
        self.module.unshard()
        try:
            yield
        finally:
            self.module.reshard()

    def _options(self, **kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, **kw)

    def model_state_dict(self):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        peft = hasattr(self.model, "peft_config")
        state = get_model_state_dict(self.module, options=self._options(cpu_offload=True, ignore_frozen_params=peft))
        return _model_weights(state, self.objective, self.model) if accel.is_main_process() else None

    @property
    def _quantized(self) -> bool:
        """torchao's 8-bit and 4-bit AdamW: their quantized moments do not gather into a full optimizer state
        dict that loads back, so each rank saves its own shards (and a resume needs as many processes)."""
        return OPTIMIZERS[self.s.optim][0] == "torchao"

    def _shard_file(self, directory: Path) -> Path:
        return Path(directory) / "fsdp_optimizer" / f"rank{accel.rank()}.pt"

    def optimizer_state(self):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        if self._quantized:
            return {"sharded": accel.world_size()}
        return get_optimizer_state_dict(self.module, self.optimizer, options=self._options(cpu_offload=True))

    def save_engine_state(self, directory: Path) -> None:
        if not self._quantized:
            return
        from torch.distributed.tensor import DTensor

        state = self.optimizer.state_dict()
        local = {i: {k: v.to_local() if isinstance(v, DTensor) else v for k, v in entry.items()}
                 for i, entry in state["state"].items()}
        path = self._shard_file(directory)
        path.parent.mkdir(exist_ok=True)
        torch.save({"state": local, "param_groups": state["param_groups"]}, path)
        if accel.world_size() > 1:  # every shard written before rank 0 renames the checkpoint into place
            torch.distributed.barrier()

    def load_optimizer_state(self, state, ckpt: Path) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        if self._quantized:
            return self._load_shards(state, ckpt)
        if not state or "param_groups" not in state or not all(isinstance(k, str) for k in state.get("state", {})):
            raise UserError(f"{ckpt}: its optimizer state was not saved under --fsdp; resume it with the engine "
                            "it was trained with")
        set_optimizer_state_dict(self.module, self.optimizer, optim_state_dict=state, options=self._options())

    def _load_shards(self, state, ckpt: Path) -> None:
        """This rank's shards of a quantized optimizer's state (save_engine_state), wrapped as its parameters are."""
        saved = (state or {}).get("sharded")
        if saved is None:
            raise UserError(f"{ckpt}: its optimizer state was not saved under --fsdp with --optim {self.s.optim}; "
                            "resume it with the engine and --optim it was trained with")
        if saved != accel.world_size():
            raise UserError(f"{ckpt}: its --optim {self.s.optim} state is sharded over {saved} processes, this run "
                            f"has {accel.world_size()}; resume it with {saved}")
        from torch.distributed.tensor import DTensor

        if not self._shard_file(ckpt).is_file():
            raise UserError(f"{ckpt}: {self._shard_file(ckpt).relative_to(ckpt)} is missing (each process saves its "
                            f"own --optim {self.s.optim} state there); resume from a whole checkpoint")
        shards = torch.load(self._shard_file(ckpt), weights_only=True)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for i, entry in shards["state"].items():
            p = params[i]
            moments = [v for k, v in entry.items() if k != "step"]
            if isinstance(p, DTensor):
                if any(v.shape != p.to_local().shape for v in moments):
                    raise UserError(f"{ckpt}: its --optim {self.s.optim} state was sharded otherwise; resume it with "
                                    f"the --fsdp sharding it was trained with ({_engine_of(ckpt)})")
                entry.update({k: DTensor.from_local(v, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                                                    stride=p.stride())
                              for k, v in entry.items() if k != "step"})
        self.optimizer.load_state_dict(shards)


def _engine_of(ckpt: Path) -> str:
    """How a checkpoint's run trained, from its args.json (for messages)."""
    from ..models.resolve import read_args
    from .checkpoint import processes_of

    try:
        args = read_args(str(ckpt))
    except UserError:
        return "see its args.json"
    engine = f"--deepspeed {args['deepspeed']}" if args.get("deepspeed") else \
        f"--fsdp {args['fsdp']}" if args.get("fsdp") else "no --deepspeed or --fsdp"
    world = processes_of(args)
    return f"{engine}, {world} process{'es' if world != 1 else ''}"


def decoder_layers(root: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of every model inside `root` (policy, frozen reference), by the class names
    transformers declares unsplittable (`_no_split_modules`)."""
    from transformers import PreTrainedModel

    names = {n for m in root.modules() if isinstance(m, PreTrainedModel) for n in (m._no_split_modules or ())}
    return [m for m in root.modules() if type(m).__name__ in names]


def build_engine(kind: str, objective, model, s: EngineSettings, *, deepspeed: dict | None = None,
                 fsdp: dict | None = None, dtype: torch.dtype = torch.float32) -> DDPEngine:
    if kind == "deepspeed":
        return DeepSpeedEngine(objective, model, s, deepspeed)
    if kind == "fsdp":
        return FSDPEngine(objective, model, s, fsdp, dtype)
    return DDPEngine(objective, model, s)


EngineFactory = Callable[[torch.nn.Module, torch.nn.Module, EngineSettings], DDPEngine]
