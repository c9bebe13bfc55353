"""Experiment trackers behind one tiny interface: log(metrics, step) and close()."""
from __future__ import annotations

from ..errors import UserError


class Tracker:
    def __init__(self, report_to: str, output_dir: str, config: dict):
        self.kind = report_to
        self._run = None
        if report_to == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("--report_to tensorboard needs tensorboard: pip install tensorboard") from None
            self._run = SummaryWriter(log_dir=f"{output_dir}/runs")
        elif report_to in ("wandb", "swanlab"):
            try:
                lib = __import__(report_to)
            except ImportError:
                raise UserError(f"--report_to {report_to} needs it installed: pip install {report_to}") from None
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
