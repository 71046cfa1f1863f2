"""TensorBoard sink: the scalars of metrics.jsonl, also as TensorBoard events.

With `output.tensorboard = true` the trainer writes every metrics line (train_loss, val_mse, lr,
samples, buffer, sims_done, ...: every number in it) to `<output.dir>/tensorboard/` with
torch.utils.tensorboard, step = the batch count. Needs the `tensorboard` extra
(`pip install -e ".[tensorboard]"`); `tensorboard --logdir ot-study/heat2d/tensorboard` shows it.

    sink = tensorboard_sink(cfg, out)      # a no-op sink unless cfg.output.tensorboard
    sink.add(metrics_dict)                 # where metrics.jsonl is written
"""
from __future__ import annotations

import math
import weakref
from pathlib import Path

from .errors import OTError

DIRNAME = "tensorboard"


class TensorBoardMissing(OTError, ImportError):
    """output.tensorboard = true without the tensorboard package."""


class TensorBoardSink:
    """One SummaryWriter; flushed after every metrics line, closed when collected or at exit."""

    def __init__(self, logdir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
        except ImportError as e:
            raise TensorBoardMissing(
                f"output.tensorboard = true needs the tensorboard package ({e}): "
                f"pip install 'onlinetrain[tensorboard]', or set output.tensorboard = false"
            ) from None
        self.logdir = Path(logdir)
        self.writer = SummaryWriter(log_dir=str(self.logdir))
        self._finalizer = weakref.finalize(self, self.writer.close)

    def add(self, m: dict):
        """Every finite number of the metrics line `m` as a scalar `ot/<key>` at step m["batch"]."""
        step = int(m["batch"])
        for k, v in m.items():
            if k == "batch" or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if math.isfinite(v):
                self.writer.add_scalar(f"ot/{k}", v, global_step=step)
        self.writer.flush()

    def close(self):
        self._finalizer()


class NullSink:
    """output.tensorboard = false: writes nothing."""

    def add(self, m: dict):
        pass

    def close(self):
        pass


def tensorboard_sink(cfg, out_dir) -> TensorBoardSink | NullSink:
    """The sink for `cfg`: TensorBoard events in <out_dir>/tensorboard, or a no-op."""
    if not getattr(cfg.output, "tensorboard", False):
        return NullSink()
    return TensorBoardSink(Path(out_dir) / DIRNAME)
