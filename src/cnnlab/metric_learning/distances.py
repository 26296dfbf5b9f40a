"""Distances between embeddings, as objects a loss or a search is given (the composition
pytorch-metric-learning uses: Musgrave et al. 2020, "PyTorch Metric Learning").

Every distance is "smaller is more alike" and offers two shapes, named as in
pytorch-metric-learning (where, as in torch, "pairwise" means row by row):
`paired(a, b)` -> N distances between rows a[i] and b[i];
`compute_mat(a, b)` -> the N x M matrix of distances between every row of a and every row of b.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.core.registry import Registry

DISTANCES = Registry("distance")


class Distance(nn.Module):
    """Base class: subclasses implement `paired` and `compute_mat`; calling is `paired`."""

    def paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compute_mat(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.paired(a, b)

    @staticmethod
    def _check(a: torch.Tensor, b: torch.Tensor, paired: bool) -> None:
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
            raise ValueError(f"expected N x D and M x D embeddings, got {tuple(a.shape)} and {tuple(b.shape)}")
        if paired and a.shape[0] != b.shape[0]:
            raise ValueError(f"paired distances need as many rows in a as in b, got {a.shape[0]} and {b.shape[0]}")


@DISTANCES.register("euclidean", aliases=("l2",))
class EuclideanDistance(Distance):
    """||a - b||_2, with a finite gradient where a == b.

    d/dx sqrt(x) is infinite at 0, so a pair of identical embeddings (the goal of every
    positive pair) would turn the whole batch's gradient into NaN. The squared distance is
    floored at `eps` before the root: the value at a == b is sqrt(eps) (1e-6 by default,
    nothing next to any margin) and the gradient there is exactly zero.
    """

    def __init__(self, eps: float = 1e-12):
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = eps

    def _root(self, squared: torch.Tensor) -> torch.Tensor:
        return squared.clamp(min=self.eps).sqrt()

    def paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self._check(a, b, paired=True)
        return self._root((a - b).pow(2).sum(dim=1))

    def compute_mat(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self._check(a, b, paired=False)
        # |a|^2 + |b|^2 - 2ab: one matrix product instead of an N x M x D difference tensor,
        # which a gallery of thousands would not fit; rounding can dip below zero, hence the clamp.
        squared = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1).unsqueeze(0) - 2.0 * a @ b.T
        return self._root(squared.clamp(min=0.0))


@DISTANCES.register("cosine")
class CosineDistance(Distance):
    """1 - cos(a, b), in [0, 2]; it ignores the embeddings' norms."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self._check(a, b, paired=True)
        return 1.0 - (F.normalize(a, dim=1, eps=self.eps) * F.normalize(b, dim=1, eps=self.eps)).sum(1)

    def compute_mat(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self._check(a, b, paired=False)
        return 1.0 - F.normalize(a, dim=1, eps=self.eps) @ F.normalize(b, dim=1, eps=self.eps).T


def create_distance(name: str, **options) -> Distance:
    """`create_distance("cosine")`; an unknown name raises KeyError listing the valid ones."""
    return DISTANCES.create(name, **options)
