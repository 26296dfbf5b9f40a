"""Small helpers every model user needs, written once."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn as nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (BatchNorm running statistics, no dropout) and no_grad for the block, then the
    model's previous mode back: evaluating in the middle of training must not leave it in
    eval mode, and evaluating a model in eval mode must not switch it to training."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def module_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def in_batches(fn: Callable[[slice], Any], count: int, batch_size: int, empty: Any) -> Any:
    """`fn(slice)` over `count` items in slices of `batch_size`, the results concatenated
    (torch tensors with torch.cat, NumPy arrays with np.concatenate); `empty` when count is 0.
    The one batching loop of every embedding pass (training's validation, the frozen-feature
    path, test sets, the verifier)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parts = [fn(slice(s, min(s + batch_size, count))) for s in range(0, count, batch_size)]
    if not parts:
        return empty
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)
