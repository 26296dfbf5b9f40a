"""TensorBoard event files of a training run (`TrainConfig.tensorboard`), written by rank 0
beside metrics.jsonl so that `tensorboard --logdir runs/` shows every block's run live.

Every scalar is plotted against the number of optimizer steps done: `lr` at each step (the
rate that step used), and each numeric field of a metrics.jsonl row (train_loss, val_acc,
epoch_time_s, ...) at the end of its epoch, under the same name. A resumed run opens a new
event file that tells TensorBoard to drop what the interrupted run logged after its last
checkpoint (`purge_step`), so no step appears twice. `tensorboard` is an optional dependency
(`pip install 'cnnlab[tensorboard]'`).
"""
from __future__ import annotations

from pathlib import Path

from cnnlab.core.errors import CnnlabError

EVENT_FILES = "events.out.tfevents.*"
# The per-epoch fields that are not curves: the epoch is the x axis, lr is logged every step.
NOT_PLOTTED = ("epoch", "lr")


class TensorBoardLog:
    """Writes to `log_dir`; with None it does nothing, so the training loop never asks."""

    def __init__(self, log_dir: str | Path | None, *, steps_done: int = 0):
        """`steps_done`: optimizer steps already in the checkpoint a run resumes from."""
        self.writer = None
        if log_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package, an optional extra
            raise CnnlabError("tensorboard logging needs the tensorboard package: "
                              "pip install 'cnnlab[tensorboard]' (or pip install tensorboard)") from None
        # Events at steps after the checkpoint's are orphans of the interrupted run.
        self.writer = SummaryWriter(str(log_dir), purge_step=steps_done + 1 if steps_done else None)

    def step(self, step: int, lr: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("lr", lr, step)

    def epoch(self, record: dict, step: int) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if key not in NOT_PLOTTED and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()  # each epoch on disk at once: the point is watching a run live

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def remove_event_files(log_dir: str | Path) -> None:
    for path in Path(log_dir).glob(EVENT_FILES):
        path.unlink(missing_ok=True)
