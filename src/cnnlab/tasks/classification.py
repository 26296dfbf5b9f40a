"""Image classification as an engine task: cross-entropy with label smoothing (Szegedy et al.
2016, "Rethinking the Inception Architecture"), accuracy, and device-resident batches from
`cnnlab.data.loader.DeviceLoader`. Also what a trained classifier leaves for the analysis
(`save_embeddings`: the one pass that runs the model over the test set) and the MAC counter
used in the comparison table."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.core.config import option
from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import save_npz_atomic
from cnnlab.data.loader import CIFAR10_MEAN, CIFAR10_STD, AugmentConfig, DeviceLoader
from cnnlab.models.utils import eval_mode, module_device
from cnnlab.training.distributed import DistContext
from cnnlab.training.task import Task


@dataclass
class ClassificationConfig:
    label_smoothing: float = option(0.1, "label smoothing of the training loss")
    crop_padding: int = option(4, "zero padding before the random crop, in pixels (0 = off)")
    flip: bool = option(True, "random horizontal flips")
    cutout: int = option(0, "Cutout square side in pixels (0 = off)")  # DeVries & Taylor 2017
    eval_batch_size: int = option(1000, "batch size of validation and test scoring")

    def __post_init__(self):
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        self.augment()  # validates crop_padding and cutout in one place: AugmentConfig

    def augment(self) -> AugmentConfig:
        return AugmentConfig(crop_padding=self.crop_padding, flip=self.flip, cutout=self.cutout)


class ClassificationTask(Task):
    """Training batches are shuffled and augmented on the device; validation is scored
    without augmentation. The training loss includes label smoothing; `val_loss` is the
    plain cross-entropy, so it is comparable across recipes."""

    def __init__(self, train: DeviceLoader, val: DeviceLoader, config: ClassificationConfig):
        self.train, self.val, self.config = train, val, config

    @classmethod
    def from_arrays(cls, train_images, train_labels, val_images, val_labels, config: ClassificationConfig,
                    *, batch_size: int, device, seed: int = 0, channels_last: bool = True,
                    mean=CIFAR10_MEAN, std=CIFAR10_STD, dist: DistContext | None = None) -> ClassificationTask:
        """`dist` (the engine's, under torchrun): each rank trains on its share of every global
        batch of `batch_size`; validation is the whole split on every rank."""
        dist = dist or DistContext()
        batch_size = min(batch_size, len(train_labels))
        if batch_size % dist.world_size:
            # DDP averages the ranks' mean losses: that is the batch's mean only for equal shares.
            raise CnnlabError(f"batch_size {batch_size} is not divisible by the {dist.world_size} processes "
                              "of the run; choose a multiple of the process count")
        # drop_last: every step sees a full batch, so the schedule and BatchNorm statistics
        # behave the same each epoch (and a compiled graph keeps one shape).
        train = DeviceLoader(train_images, train_labels, batch_size, device=device,
                             mean=mean, std=std, shuffle=True, augment=config.augment(), drop_last=True,
                             seed=seed, channels_last=channels_last, rank=dist.rank, world_size=dist.world_size)
        val = eval_loader(val_images, val_labels, config.eval_batch_size, device=device,
                          channels_last=channels_last, mean=mean, std=std)
        return cls(train, val, config)

    def train_batches(self, epoch: int) -> DeviceLoader:
        self.train.set_epoch(epoch)
        return self.train

    def steps_per_epoch(self) -> int:
        return len(self.train)

    def training_step(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        logits = model(x)
        # The loss in fp32 even under bf16 autocast: log-softmax of 10 logits is cheap and exact.
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.config.label_smoothing)
        return loss, {"acc": (logits.argmax(1) == y).float().mean()}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return score(model, self.val)


def eval_loader(images, labels, batch_size: int, *, device, channels_last: bool = True,
                mean=CIFAR10_MEAN, std=CIFAR10_STD) -> DeviceLoader:
    return DeviceLoader(images, labels, batch_size, device=device, mean=mean, std=std,
                        shuffle=False, augment=None, channels_last=channels_last)


@torch.no_grad()
def score(model: nn.Module, batches: Iterable) -> dict[str, float]:
    """Mean cross-entropy and accuracy of `model` over (x, y) batches; one read-back at the end.
    The caller chooses the mode (the engine's `evaluate` sets eval mode and autocast)."""
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in batches:
        logits = model(x).float()
        loss_sum = loss_sum + F.cross_entropy(logits, y, reduction="sum")
        correct = correct + (logits.argmax(1) == y).sum()
        count += len(y)
    if count == 0:
        raise ValueError("score() got no batches")
    return {"loss": float(loss_sum) / count, "acc": float(correct) / count}


def save_embeddings(model: nn.Module, batches: Iterable, path: str | Path,
                    class_names: Sequence[str]) -> Path:
    """Run `model` over `batches` of (x, y) (already on the model's device) and write an npz
    with `features` (float32 N x D, from `forward_features`), `labels` (int64), `logits`
    (float32 N x C, the head applied to those features) and `class_names`: the file
    `cnnlab.reports.analysis` and the report read, so they never run a model.

    Runs in eval mode (dropout off, BatchNorm running statistics); the model's previous
    mode comes back afterwards.
    """
    features, labels, logits = [], [], []
    with eval_mode(model):
        for x, y in batches:
            f = model.forward_features(x)
            # In eval mode dropout is the identity, so head(features) equals model(x).
            z = model.head(f)
            features.append(f.float().cpu())
            logits.append(z.float().cpu())
            labels.append(torch.as_tensor(y).long().cpu())
    if not features:
        raise CnnlabError("save_embeddings got no batches")
    arrays = {
        "features": torch.cat(features).numpy().astype(np.float32),
        "labels": torch.cat(labels).numpy().astype(np.int64),
        "logits": torch.cat(logits).numpy().astype(np.float32),
        "class_names": np.asarray([str(c) for c in class_names], dtype=str),
    }
    if arrays["logits"].shape[1] != len(class_names):
        raise ValueError(f"model has {arrays['logits'].shape[1]} outputs but {len(class_names)} class names")
    return save_npz_atomic(path, arrays)


def count_macs(model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32)) -> int:
    """Multiply-accumulates per image of the convolutions and matrix products (Conv2d, Linear),
    from torch's own `FlopCounterMode` on one forward pass in eval mode (FLOPs / 2). Element-wise
    work (BatchNorm, activations, attention gates, pooling) is not counted, as is usual.
    tests/test_blocks.py holds golden values."""
    from torch.utils.flop_counter import FlopCounterMode
    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape, device=module_device(model)))
    return int(counter.get_total_flops() // 2)
