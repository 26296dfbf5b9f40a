"""What a job hands the training engine (`Task`), what the engine calls back after each
validation (`Callback`), and how it keeps the epoch that is the result (`Selection`).

A task says what differs between jobs (CIFAR classification, Siamese face verification): which
batches make an epoch, the loss of one batch, how to evaluate. Everything else (device,
precision, optimizer, schedule, checkpoints, which epoch is kept) is the engine's. Optional
hooks have default implementations here, so the engine calls them without asking whether they
exist, and a task overrides only what it needs.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sized
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn


class Task:
    """Subclass and implement the first four; the hooks below them are optional."""

    def train_batches(self, epoch: int) -> Iterable[Any] | Sized:
        """The batches of epoch `epoch` (0-based), already on the engine's device; has len()."""
        raise NotImplementedError

    def steps_per_epoch(self) -> int:
        """How many batches every epoch has: the schedule's length is epochs x this, known
        before any epoch's batches are built."""
        raise NotImplementedError

    def training_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(scalar loss, batch-mean metrics such as {"acc": ...}); runs under autocast."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Validation metrics (e.g. {"loss":..., "acc":...}); runs in eval mode, no_grad, autocast."""
        raise NotImplementedError

    # ---------------------------------------------------------------- optional hooks
    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        """Called before each epoch's batches (e.g. to unfreeze a backbone)."""

    def param_groups(self, model: nn.Module) -> list[dict] | None:
        """Optimizer groups (dicts with "params" and optional "lr_scale", "weight_decay"), or None
        for the engine's default: weight decay on weights, none on biases and norm scales."""
        return None

    def loss_module(self) -> nn.Module | None:
        """The loss's own learnable parameters (the class weights of a margin loss), or None.
        The engine moves it to the device and trains, clips and checkpoints it beside the model;
        with `param_groups`, the task places its parameters in those groups itself."""
        return None

    def batch_size(self, batch: Any) -> int:
        """Images in a batch (for per-image means and images/s): the first tensor's length."""
        return len(batch[0])

    def training_module(self, model: nn.Module) -> nn.Module:
        """The module `training_step` calls, when that is not the model's `forward`: DDP
        synchronises what runs there."""
        return model


class Callback:
    """Told about each validation, after the engine has checkpointed that epoch. Raising stops
    training (an optuna pruner does: the checkpoint of the epoch stays)."""

    def on_validation(self, epoch: int, record: dict, selected_epoch: int) -> None:
        """`epoch` 1-based; `record` the epoch's metrics.jsonl row; `selected_epoch` the epoch
        the run would return if it ended now."""


@dataclass
class Selection:
    """The best epoch so far by a validation metric (`metric` = "" keeps the last epoch)."""
    metric: str = ""
    mode: str = "max"
    epoch: int = 0
    value: float = field(default=-math.inf)
    state: dict | None = None

    def __post_init__(self):
        if self.mode not in ("max", "min"):
            raise ValueError(f"select_mode must be max or min, got {self.mode!r}")

    def update(self, epoch: int, val: dict[str, float], model: nn.Module) -> bool:
        """Record `epoch` (1-based) if it is the best so far; True when it is."""
        if not self.metric:
            self.epoch = epoch
            return True
        if self.metric not in val:
            raise KeyError(f"select_metric {self.metric!r} is not a validation metric; the task reports "
                           f"{', '.join(sorted(val))}")
        value = float(val[self.metric]) * (1 if self.mode == "max" else -1)
        if value > self.value or self.state is None:
            self.epoch, self.value = epoch, value
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return True
        return False

    def to_dict(self) -> dict | None:
        if not self.metric:
            return None
        return {"metric": self.metric, "mode": self.mode, "epoch": self.epoch, "value": self.value,
                "state": self.state}

    def load(self, saved: dict | None) -> None:
        if self.metric and saved:
            self.epoch, self.value, self.state = int(saved["epoch"]), float(saved["value"]), saved["state"]

    def restore_into(self, model: nn.Module) -> None:
        """Put the selected epoch's weights into `model` (nothing to do when the last is kept)."""
        if self.state is not None:
            model.load_state_dict(copy.deepcopy(self.state))
