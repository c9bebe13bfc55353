"""The accelerator layer: real on CPU, faked availability for the other devices."""
import re

import pytest
import torch

from swiftlike import accel
from swiftlike.errors import UserError


@pytest.fixture
def no_accelerator(monkeypatch):
    """A machine with no GPU or NPU (the tests also run on machines that have one)."""
    monkeypatch.delenv("WB_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(accel, "_npu_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    if hasattr(torch, "xpu"):
        monkeypatch.setattr(torch.xpu, "is_available", lambda: False)


def test_cpu_is_detected_without_an_accelerator(no_accelerator):
    assert accel.device_type() == "cpu"
    assert accel.device() == torch.device("cpu")
    assert accel.resolve_dtype("auto") == torch.float32
    assert accel.dist_backend() == "gloo"


@pytest.mark.parametrize("kind, backend, dtype", [("cuda", "nccl", torch.bfloat16), ("npu", "hccl", torch.bfloat16),
                                                  ("mps", "gloo", torch.float16), ("cpu", "gloo", torch.float32)])
def test_backend_and_dtype_per_device(monkeypatch, kind, backend, dtype):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert accel.dist_backend(kind) == backend
    assert accel.resolve_dtype("auto", kind) == dtype


@pytest.mark.parametrize("kind, spec", [("cuda", "cpu:gloo,cuda:nccl"), ("cpu", "gloo"), ("mps", "gloo")])
def test_the_process_group_reduces_cpu_tensors_on_every_device(kind, spec):
    """A group of NCCL alone has no backend for the CPU tensors the trainer reduces each step (token counts): the
    first step of a multi-GPU run would fail ("No backend type associated with device type cpu"). What is checked
    here is the spec torch reads; a real NCCL group needs two GPUs, which no machine of this project has had."""
    from torch.distributed.distributed_c10d import Backend, BackendConfig

    assert accel.group_backends(kind) == spec
    backends = BackendConfig(Backend(spec)).get_device_backend_map()
    assert backends["cpu"] == "gloo" and (kind != "cuda" or backends["cuda"] == "nccl")


def test_fake_cuda_is_preferred(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert accel.device_type() == "cuda"
    assert accel.device() == torch.device("cuda", 1)


def test_fake_npu(monkeypatch, no_accelerator):
    monkeypatch.setattr(accel, "_npu_available", lambda: True)
    assert accel.device_type() == "npu"


def test_fake_mps(monkeypatch, no_accelerator):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert accel.device_type() == "mps"


def test_forced_device(monkeypatch):
    monkeypatch.setenv("WB_DEVICE", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert accel.device_type() == "cpu"


def test_explicit_dtype_and_bad_dtype():
    assert accel.resolve_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(UserError, match="--torch_dtype 'float8'"):
        accel.resolve_dtype("float8")


def test_rng_state_round_trip():
    accel.seed_everything(3)
    state = accel.rng_state()
    a = torch.rand(3)
    accel.set_rng_state(state)
    assert torch.equal(a, torch.rand(3))


def test_no_device_calls_outside_accel():
    from pathlib import Path

    root = Path(__file__).parents[1] / "swiftlike"
    calls = re.compile(r"torch\.(cuda|npu|mps|xpu)\b|import torch_npu")
    offenders = [str(p) for p in root.rglob("*.py") if p.name != "accel.py" and calls.search(p.read_text())]
    assert offenders == []
