"""The contrastive loss of Hadsell, Chopra and LeCun (2006), "Dimensionality Reduction by
Learning an Invariant Mapping":

    L = y * d^2 + (1 - y) * max(0, m - d)^2,   mean over pairs,

with y = 1 for two images of the same person, d the distance between their embeddings
(Euclidean by default, any `cnnlab.metric_learning.distances.Distance` otherwise) and m the margin beyond
which a different-person pair costs nothing.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from cnnlab.metric_learning.distances import Distance, EuclideanDistance


class ContrastiveLoss(nn.Module):
    def __init__(self, margin: float = 1.0, distance: Distance | None = None):
        super().__init__()
        if not margin > 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        self.margin = float(margin)
        self.distance = distance if distance is not None else EuclideanDistance()

    def per_pair(self, emb_a: torch.Tensor, emb_b: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        """The loss of every pair, N values: d^2 for same-person pairs, max(0, m - d)^2 otherwise."""
        return self.per_pair_and_distances(emb_a, emb_b, same)[0]

    def per_pair_and_distances(self, emb_a: torch.Tensor, emb_b: torch.Tensor, same: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss of every pair, distance d of every pair): a caller that also reports the
        distances (training metrics) reuses these instead of computing them a second time."""
        if same.dim() != 1 or same.shape[0] != emb_a.shape[0]:
            raise ValueError(f"`same` must hold one label per pair ({emb_a.shape[0]}), got shape {tuple(same.shape)}")
        d = self.distance.paired(emb_a, emb_b)
        positive = same.to(device=d.device, dtype=torch.bool)
        return torch.where(positive, d.pow(2), (self.margin - d).clamp(min=0).pow(2)), d

    def forward(self, emb_a: torch.Tensor, emb_b: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        if emb_a.shape[0] == 0:
            raise ValueError("contrastive loss of zero pairs is undefined")
        return self.per_pair(emb_a, emb_b, same).mean()

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
