"""Accelerator layer: the only module that talks to torch.cuda / torch_npu / mps / xpu.

Everything device-, dtype- or process-group-related goes through here so the rest of the
code stays device-agnostic.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import random
from dataclasses import dataclass
from typing import Callable

import torch


def _npu_available() -> bool:
    if importlib.util.find_spec("torch_npu") is None:
        return False
    import torch_npu  # noqa: F401  (registers torch.npu)

    return bool(getattr(torch, "npu", None) and torch.npu.is_available())


def device_type() -> str:
    """Best available device type: cuda, npu, xpu, mps or cpu (override with WB_DEVICE)."""
    forced = os.environ.get("WB_DEVICE")
    if forced:
        return forced
    if torch.cuda.is_available():
        return "cuda"
    if _npu_available():
        return "npu"
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "xpu"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_world_size() -> int:
    """Processes on this node (torchrun's LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size())))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def device() -> torch.device:
    kind = device_type()
    if kind in ("cuda", "npu", "xpu"):
        return torch.device(kind, local_rank())
    return torch.device(kind)


def bf16_supported(kind: str | None = None) -> bool:
    kind = kind or device_type()
    if kind == "cuda":
        return torch.cuda.is_bf16_supported()
    if kind == "npu":
        return True
    if kind == "xpu":
        return True
    # CPU supports bf16 numerically but is far slower than fp32 on most hosts; MPS support varies.
    return False


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(name: str | None, kind: str | None = None) -> torch.dtype:
    """`auto` (or None) picks bf16 where the device supports it, fp16 on MPS, else fp32."""
    if name and name != "auto":
        if name not in _DTYPES:
            from .errors import UserError

            raise UserError(f"--torch_dtype {name!r} is not one of auto, {', '.join(sorted(_DTYPES))}")
        return _DTYPES[name]
    kind = kind or device_type()
    if bf16_supported(kind):
        return torch.bfloat16
    if kind == "mps":
        return torch.float16
    return torch.float32


def dist_backend(kind: str | None = None) -> str:
    """The collective backend of the device's tensors."""
    return {"cuda": "nccl", "npu": "hccl", "xpu": "xccl"}.get(kind or device_type(), "gloo")


def group_backends(kind: str | None = None) -> str:
    """The process group's backends: the device's for its tensors and gloo for CPU tensors (the step's token counts,
    a stop request), which a group of the device's backend alone cannot reduce."""
    kind = kind or device_type()
    device = dist_backend(kind)
    return device if device == "gloo" else f"cpu:gloo,{kind}:{device}"


def init_distributed() -> bool:
    """Join the process group when launched by torchrun; returns True when distributed."""
    if world_size() <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        kind = device_type()
        if kind == "cuda":
            torch.cuda.set_device(local_rank())
        elif kind == "npu":
            torch.npu.set_device(local_rank())
        dist.init_process_group(backend=group_backends(kind))
    return True


def free_port() -> int:
    """A TCP port nobody listens on now (for a one-machine process group's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_ONE_PROCESS_ENV: dict | None = None  # what init_process_group_anyway changed in os.environ (to undo it)
_OWN_GROUP = False  # whether the process group is the one-process group made here (kept for later runs)


def init_process_group_anyway() -> None:
    """A process group also for one process (DeepSpeed and FSDP2 need one even then); release_process_group restores
    the environment when the run ends."""
    import torch.distributed as dist

    global _ONE_PROCESS_ENV, _OWN_GROUP
    if world_size() > 1:
        init_distributed()
        return
    if dist.is_initialized() and not _OWN_GROUP:  # (someone else's group)
        return
    values = (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1"),
              ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(free_port())))
    _ONE_PROCESS_ENV = {key: os.environ.get(key) for key, _ in values}
    for key, value in values:  # (DeepSpeed reads LOCAL_RANK in every run)
        os.environ.setdefault(key, value)
    if not dist.is_initialized():
        dist.init_process_group(backend=group_backends(), world_size=1, rank=0)
        _OWN_GROUP = True


def release_process_group() -> None:
    """The environment as it was before init_process_group_anyway, so that a later run in this Python process (a
    notebook's), or a `wb` it starts, is not taken for one of torchrun's processes: a `nproc_per_node` > 1 there is
    refused or launched, not silently run as one process. The one-process group itself stays for the next run
    (DeepSpeed keeps its groups for the life of the process: a new group would not be registered with them)."""
    global _ONE_PROCESS_ENV
    if _ONE_PROCESS_ENV is None:
        return
    for key, value in _ONE_PROCESS_ENV.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _ONE_PROCESS_ENV = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds every device's default generator too
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass


@contextlib.contextmanager
def seeded(seed: int):
    """torch's generators (the CPU's and this process's device's) seeded with `seed` inside, and as they were
    after: draws that must come out alike on every process whatever each drew before."""
    kind = device_type()
    devices = [torch.device(device()).index or 0] if kind in ("cuda", "npu", "xpu") else []
    with torch.random.fork_rng(devices=devices, device_type=kind if devices else "cuda"):
        torch.manual_seed(seed)
        yield


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    kind = device_type()
    if kind == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    elif kind == "npu":
        state["npu"] = torch.npu.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device_type() == "cuda":
        torch.cuda.set_rng_state_all(state["cuda"])
    if "npu" in state and device_type() == "npu":
        torch.npu.set_rng_state_all(state["npu"])


def peak_memory_bytes() -> int | None:
    """Peak accelerator memory allocated by this process, or None on CPU/MPS."""
    kind = device_type()
    if kind == "cuda":
        return torch.cuda.max_memory_allocated()
    if kind == "npu":
        return torch.npu.max_memory_allocated()
    return None


def empty_cache() -> None:
    kind = device_type()
    if kind == "cuda":
        torch.cuda.empty_cache()
    elif kind == "npu":
        torch.npu.empty_cache()
    elif kind == "mps":
        torch.mps.empty_cache()


def record_graph(step: Callable[[], torch.Tensor], device: torch.device) -> Callable[[], torch.Tensor]:
    """`step` captured as a CUDA graph on `device` (its kernels, inputs and output at fixed addresses; nothing runs
    now); returns the replay, which runs them and returns the output tensor the graph writes. A capture that fails
    leaves this thread's stream and the memory allocator as they were, and raises."""
    if device.type != "cuda":
        raise RuntimeError(f"graph capture needs a CUDA device, not {device}")
    graph, pool = torch.cuda.CUDAGraph(), torch.cuda.graph_pool_handle()
    index = device.index if device.index is not None else torch.cuda.current_device()
    # (the stream comes back even when the capture fails: torch.cuda.graph's exit ends the capture first and raises
    # there; thread_local: what other threads do meanwhile, a data loader pinning memory, does not break it)
    with torch.cuda.device(index), torch.cuda.stream(torch.cuda.current_stream(index)):
        try:
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                out = step()
        except BaseException:
            with contextlib.suppress(RuntimeError):  # (raises if the capture had already stopped allocating)
                torch._C._cuda_endAllocateToPool(index, pool)
            with contextlib.suppress(RuntimeError):  # (the capture's own error is the one to raise)
                torch._C._cuda_releasePool(index, pool)  # the failed capture's memory, which its graph never frees
            raise

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


@contextlib.contextmanager
def side_stream(device: torch.device):
    """On CUDA, the code inside runs on a side stream and has finished when it ends (what graph capture asks of the
    steps before it); elsewhere, as it is."""
    if device.type != "cuda":
        yield
        return
    main, side = torch.cuda.current_stream(device), torch.cuda.Stream(device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        yield
    main.wait_stream(side)
    torch.cuda.synchronize(device)  # (what it wrote is read on the main stream next)


@dataclass
class EnvReport:
    device: str
    device_name: str
    device_count: int
    dtype: str
    backend: str
    torch_version: str

    def lines(self) -> list[str]:
        return [f"{k:14s} {v}" for k, v in self.__dict__.items()]


def env_report() -> EnvReport:
    kind = device_type()
    count, name = 1, "cpu"
    if kind == "cuda":
        count, name = torch.cuda.device_count(), torch.cuda.get_device_name(0)
    elif kind == "npu":
        count, name = torch.npu.device_count(), torch.npu.get_device_name(0)
    elif kind == "xpu":
        count, name = torch.xpu.device_count(), torch.xpu.get_device_name(0)
    elif kind == "mps":
        name = "Apple MPS"
    else:
        name = f"cpu ({os.cpu_count()} cores)"
    return EnvReport(kind, name, count, str(resolve_dtype("auto", kind)).replace("torch.", ""),
                     dist_backend(kind), torch.__version__)
