"""More than one process: `wb` runs itself under torchrun and reports as one process would.

Each worker says its own error (a one-line `wb: error: ...`, or a traceback for a bug). Under torchrun every rank
would print the same line, and torchrun would follow it with its ChildFailedError report (or, on Ctrl-C, its own
traceback) and exit 1. Here the workers leave their one-line messages in a directory the launching `wb` reads when
torchrun ends: each distinct line is printed once, and `wb` exits with the workers' status (2 for an error in what
was asked, 130 for Ctrl-C). `python -m swiftlike.cli.launch` is torchrun without its report.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

MESSAGES = "WB_WORKER_MESSAGES"  # the directory the workers leave their messages in


def say(line: str) -> None:
    """A worker's closing message into the launcher's directory; elsewhere, to standard error."""
    where = os.environ.get(MESSAGES)
    if where and "LOCAL_RANK" in os.environ and Path(where).is_dir():
        with open(Path(where) / f"rank-{os.environ['LOCAL_RANK']}", "a", encoding="utf-8") as f:
            f.write(line + "\n")
    else:
        print(line, file=sys.stderr)


def relaunch(argv: list[str], plan: dict) -> int | None:
    """Run the same command under torchrun when more than one process (or node) is asked for: its exit status,
    or None to run it here."""
    nproc, nnodes = plan["nproc_per_node"], plan["nnodes"]
    if (nproc <= 1 and nnodes <= 1) or "LOCAL_RANK" in os.environ:
        return None
    port = plan["master_port"]
    if port is None:  # one node: any free port
        from ..accel import free_port

        port = free_port()
    cmd = [sys.executable, "-m", "swiftlike.cli.launch", f"--nproc_per_node={nproc}", f"--master_port={port}"]
    if nnodes > 1:
        cmd += [f"--nnodes={nnodes}", f"--node_rank={plan['node_rank']}", f"--master_addr={plan['master_addr']}"]
    cmd += ["-m", "swiftlike.cli.main", *argv]
    what = f"{nproc} processes" + (f" on node {plan['node_rank']} of {nnodes}" if nnodes > 1 else "")
    print(f"[wb] launching {what}: {' '.join(cmd)}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="wb-messages-") as messages:
        # (torchrun sets one thread a worker where OMP_NUM_THREADS is unset, with a banner saying so)
        env = {"OMP_NUM_THREADS": "1", **os.environ, MESSAGES: messages}
        code = _wait(subprocess.Popen(cmd, env=env, start_new_session=True))
        said = []
        for path in sorted(Path(messages).iterdir(), key=lambda p: int(p.name.split("-")[1])):
            said += [line for line in path.read_text(encoding="utf-8").splitlines() if line not in said]
    stopped = {130: "wb: interrupted", 143: "wb: stopped by SIGTERM", 129: "wb: stopped: the terminal closed"}
    if code in stopped and stopped[code] not in said:
        said = [line for line in said if line != "wb: interrupted"] + [stopped[code]]
    for line in said:
        print(line, file=sys.stderr)
    return code


def _wait(proc: subprocess.Popen) -> int:
    """torchrun's exit status. It runs in a session of its own (as its workers do): a Ctrl-C, a SIGTERM (a
    scheduler's) or a SIGHUP (a closed terminal) sent to `wb` reaches it once, as SIGINT, which it passes to the
    workers: they finish their step, save it and stop. (torchrun itself sends SIGTERM to the others when a worker
    fails: they do not take that for a stop.) A second signal kills torchrun and every worker at once."""
    caught: list[int] = []

    def stop(signum, _frame=None):
        if caught:
            _kill_all(proc)
        else:
            proc.send_signal(signal.SIGINT)
        caught.append(signum)

    handlers = {}
    if threading.current_thread() is threading.main_thread():  # (elsewhere these signals are the caller's)
        handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                stop(signal.SIGINT)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return 128 + caught[0] if caught and code != 0 else code


def _kill_all(proc: subprocess.Popen) -> None:
    """torchrun and its workers, each the leader of a session of its own (killing torchrun alone leaves them)."""
    children = []
    for task in Path(f"/proc/{proc.pid}/task").glob("*/children"):
        try:
            children += [int(pid) for pid in task.read_text().split()]
        except OSError:
            pass
    for pid in children:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    proc.kill()


class _NoFailureLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("failed (exitcode")


def torchrun(argv: list[str]) -> int:
    """torch.distributed.run, ending in the workers' exit status instead of its failure report."""
    from torch.distributed import DistError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import parse_args, run

    from ..errors import one_line

    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(_NoFailureLine())
    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        # a worker's own status (2: an error in what was asked), else that of the signal that ended them
        return next((c for c in codes if c > 0), 128 - min(codes) if codes and min(codes) < 0 else 1)
    except SignalException as e:
        return 128 + int(e.sigval)
    except (DistError, RendezvousError) as e:  # before any worker ran: the rendezvous (a port taken, a node away)
        say(f"wb: error: the processes could not meet (--master_addr / --master_port): {one_line(e)}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(torchrun(sys.argv[1:]))
