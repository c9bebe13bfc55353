"""Experiment trackers behind one tiny interface: log(metrics, step) and close()."""
from __future__ import annotations

from ..errors import UserError


_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb", "swanlab": "swanlab"}


def check_tracker(report_to: str) -> None:
    """Fail in the first second, not after the model download and data encoding, when the tracker is missing."""
    import importlib.util

    package = _PACKAGE.get(report_to)
    if package and importlib.util.find_spec(package) is None:
        raise UserError(f"--report_to {report_to} needs {package}: pip install {package}")


class Tracker:
    def __init__(self, report_to: str, output_dir: str, config: dict):
        self.kind = report_to
        self._run = None
        check_tracker(report_to)
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._run = SummaryWriter(log_dir=f"{output_dir}/runs")
        elif report_to in ("wandb", "swanlab"):
            lib = __import__(report_to)
            self._run = lib.init(config=config, dir=output_dir) if report_to == "wandb" else \
                lib.init(config=config, logdir=output_dir)

    def log(self, metrics: dict, step: int) -> None:
        if self._run is None:
            return
        if self.kind == "tensorboard":
            for k, v in metrics.items():
                self._run.add_scalar(k, v, step)
        else:
            self._run.log(metrics, step=step)

    def close(self) -> None:
        if self._run is not None:
            (self._run.close if self.kind == "tensorboard" else self._run.finish)()
