import atexit
import contextlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# under pytest-xdist (pyproject's addopts) the workers share the cores: each worker's torch, and the processes its
# tests start, get their share of them rather than all of them each (oversubscribed threads spin and wait)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
if not torch.cuda.is_available():  # DeepSpeed (imported by accelerate) would print to stdout that it found no GPU
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
# encoded-data cache of the test session: never the user's own
os.environ["WB_CACHE_DIR"] = tempfile.mkdtemp(prefix="wb-test-cache-")
atexit.register(shutil.rmtree, os.environ["WB_CACHE_DIR"], ignore_errors=True)

DATA = Path(__file__).parent / "data"
QWEN3_TOKENIZER = Path(__file__).parents[1] / "swiftlike" / "assets" / "tokenizers" / "qwen3"


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN3_TOKENIZER)


@contextlib.contextmanager
def _on_the_cpu():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WB_DEVICE", "cpu")         # swiftlike's device, in this process and the ones it starts
        mp.setenv("DS_ACCELERATOR", "cpu")    # DeepSpeed's, in the processes
        yield


@pytest.fixture
def cpu_processes():
    """Tests of several processes (and the one-process runs they are compared with) run on the CPU, gloo, on any
    machine: what they check is the engines' arithmetic, and a one-GPU machine has no GPU for a second process."""
    with _on_the_cpu():
        yield


@pytest.fixture(scope="module")
def cpu_processes_module():
    """cpu_processes for a whole module, its module-scoped fixtures' runs included (the module's `pytestmark`:
    fixtures it names are set up before those the tests ask for, in each scope)."""
    with _on_the_cpu():
        yield


def _decodes_video_files() -> bool:
    try:
        importlib.import_module("av")
    except ImportError:
        return False
    return True


# Decoding a video file needs PyAV: the test extra brings it (test_examples.test_hiding_works fails without it, so
# CI never skips these); a GPU machine that is sent only some wheels (benchmarks/gpu_check.sh) may lack it
needs_av = pytest.mark.skipif(not _decodes_video_files(), reason="av is not installed: video files cannot be decoded")


def pytest_collection_modifyitems(items):
    """Tests marked gpu are skipped without a CUDA GPU (`pytest -m gpu` runs just them on one)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_logreport(report):
    """With WB_FAILURE_LOG set, every failure's traceback goes to that file the moment it is known (a run that a
    time limit stops, as on a lent GPU machine, never prints its summary). Under pytest-xdist only the controller
    writes (workers send it their reports)."""
    path = os.environ.get("WB_FAILURE_LOG")
    if path and report.failed and not os.environ.get("PYTEST_XDIST_WORKER"):
        with open(path, "a") as f:
            f.write(f"=== {report.nodeid} ({report.when})\n{report.longreprtext}\n\n")


STEP_LOG = re.compile(r'\{"step": \d+, "epoch"[^\n]*?\}(?=\s|$)')


def wb_cli(*args: str, cwd=None, check: bool = True, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    """`wb ARGS` in a process of its own (with `env` added to this one's); with `check`, a non-zero exit fails the
    test with the end of the command's output."""
    r = subprocess.run([sys.executable, "-m", "swiftlike.cli.main", *args], cwd=cwd, env={**os.environ, **env},
                       capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"wb {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    return r


def logged_steps(r: subprocess.CompletedProcess) -> list[dict]:
    """The records a training command printed, one a logged step (`{"step": 1, "epoch": ..., "loss": ...}`)."""
    return [json.loads(m) for m in STEP_LOG.findall(r.stdout + r.stderr)]


@contextlib.contextmanager
def file_server(directory):
    """An HTTP server on 127.0.0.1 serving `directory`: yields (base URL, the paths it was asked for)."""
    import http.server
    import threading

    served = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(directory), **kw)

        def do_GET(self):  # noqa: N802
            served.append(self.path)
            return super().do_GET()

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
