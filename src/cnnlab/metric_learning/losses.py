"""The contrastive loss of Hadsell, Chopra and LeCun (2006), "Dimensionality Reduction by
Learning an Invariant Mapping":

    L = y * d^2 + (1 - y) * max(0, m - d)^2,   mean over pairs,

with y = 1 for two images of the same person, d the distance between their embeddings
(Euclidean by default, any `cnnlab.metric_learning.distances.Distance` otherwise) and m the margin beyond
which a different-person pair costs nothing.

`MarginSoftmaxLoss` (CosFace, ArcFace, sub-center ArcFace) learns from identities instead of
pairs: each image against one learned weight vector (or K) per training person.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

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


class MarginSoftmaxLoss(nn.Module):
    """Additive-margin softmax over training identities, on cosine similarities between the
    L2-normalised embedding and one learnable weight vector per class:

        cosface (Wang et al. 2018, "CosFace"):  logit_y = s * (cos(theta_y) - m)
        arcface (Deng et al. 2019, "ArcFace"):  logit_y = s * cos(theta_y + m),  m in radians

    the other classes' logits s * cos(theta_j), then cross-entropy. Beyond theta_y = pi - m,
    cos(theta_y + m) would rise again as the angle grows; ArcFace then uses
    cos(theta_y) - m * sin(m), which keeps the loss increasing in the angle. The paper's
    defaults: s = 64; m = 0.35 (cosface), 0.5 (arcface).

    With `subcenters` K > 1 each class has K vectors and its cosine is the largest of the K
    (Deng et al. 2020, "Sub-center ArcFace"): a person's mislabelled or unusual images can settle
    on a sub-center of their own instead of pulling the person's one vector away from the rest.
    The rows of `weight` are class-major: class c's sub-centers are rows c*K ... c*K + K-1.

    Unlike the contrastive loss it learns parameters of its own (`weight`, classes*K x dim): the
    training engine optimises and checkpoints them through `Task.loss_module`.
    """

    KINDS = ("cosface", "arcface")

    def __init__(self, kind: str, num_classes: int, embedding_dim: int, margin: float | None = None,
                 scale: float = 64.0, subcenters: int = 1):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"margin loss must be one of {', '.join(self.KINDS)}, got {kind!r}")
        if num_classes < 2:
            raise ValueError(f"a margin loss needs at least 2 classes, got {num_classes}")
        self.kind, self.scale = kind, float(scale)
        self.margin = float(margin if margin is not None else {"cosface": 0.35, "arcface": 0.5}[kind])
        if not (self.margin >= 0 and self.scale > 0):
            raise ValueError(f"margin must be >= 0 and scale > 0, got margin={self.margin}, scale={self.scale}")
        if subcenters < 1:
            raise ValueError(f"subcenters must be >= 1, got {subcenters}")
        self.num_classes, self.subcenters = int(num_classes), int(subcenters)
        self.weight = nn.Parameter(torch.empty(num_classes * subcenters, embedding_dim))
        nn.init.xavier_normal_(self.weight)

    @torch.no_grad()
    def imprint(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Each class vector set to the normalised mean of its L2-normalised `embeddings` (Qi et
        al. 2018, "Low-Shot Learning with Imprinted Weights"): the classifier starts where the
        network already puts each person, instead of at random directions it must first learn.
        Every class must have at least one embedding.

        With K sub-centers, a class's i-th embedding (in the order given) goes to sub-center
        i mod K, so the sub-centers start apart, each at some of the person's images; a
        sub-center left without an embedding (a person with fewer than K) starts at the mean of
        them all."""
        labels = labels.to(self.weight.device).long()
        z = F.normalize(embeddings.to(self.weight.device, self.weight.dtype), dim=1)
        counts = torch.bincount(labels, minlength=self.num_classes)
        if bool((counts == 0).any()):
            raise ValueError(f"{int((counts == 0).sum())} classes have no embedding to imprint")
        means = torch.zeros(self.num_classes, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, labels, z)
        k = self.subcenters
        # The rank of each embedding among its class's, from one stable sort by class.
        order = torch.argsort(labels, stable=True)
        first = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(labels)
        rank[order] = torch.arange(len(labels), device=labels.device) - first[labels[order]]
        slot = labels * k + rank % k
        sums = torch.zeros_like(self.weight).index_add_(0, slot, z)
        empty = torch.bincount(slot, minlength=len(self.weight)) == 0
        sums[empty] = means.repeat_interleave(k, 0)[empty]
        self.weight.copy_(F.normalize(sums, dim=1))

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The scaled logits, N x classes, with the margin applied to each row's own class."""
        cosine = F.normalize(embeddings, dim=1) @ F.normalize(self.weight, dim=1).to(embeddings.dtype).t()
        if self.subcenters > 1:
            cosine = cosine.view(len(cosine), self.num_classes, self.subcenters).amax(2)
        target = cosine.gather(1, labels.view(-1, 1))
        if self.kind == "cosface":
            shifted = target - self.margin
        else:
            theta = torch.acos(target.clamp(-1 + 1e-7, 1 - 1e-7))
            shifted = torch.where(theta <= math.pi - self.margin, torch.cos(theta + self.margin),
                                  target - self.margin * math.sin(self.margin))
        return self.scale * cosine.scatter(1, labels.view(-1, 1), shifted)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if embeddings.shape[0] == 0:
            raise ValueError("margin loss of zero embeddings is undefined")
        return F.cross_entropy(self.logits(embeddings, labels).float(), labels)

    def extra_repr(self) -> str:
        return (f"{self.kind}, classes={self.num_classes}, margin={self.margin}, scale={self.scale}"
                + (f", subcenters={self.subcenters}" if self.subcenters > 1 else ""))
