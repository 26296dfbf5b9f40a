"""Pair miners: which pairs of one P x K batch the contrastive loss sees. A separate object from
the loss and the distance, as in pytorch-metric-learning: `miner(embeddings, labels,
generator)` -> (i, j, same) row indices into the batch, chosen without gradients.

- `random` (`RandomPairMiner`): every same-person pair and as many different-person pairs
  drawn at random (`cnnlab.data.pairs.batch_pairs`). Most random different-person pairs are
  already far apart, so most of the loss is zero and nothing pushes the nearest impostor away.
- `hard` (`HardPairMiner`): every same-person pair plus, for every image, its `negatives`
  nearest different-person images in the batch: the impostors that a nearest-neighbour search
  would return (the "batch hard" negatives of Hermans, Beyer and Leibe 2017, used here as
  pairs for the contrastive loss). Optionally only the `positives` farthest same-person images
  per image instead of all of them.
"""
from __future__ import annotations

import inspect

import torch

from cnnlab.core.registry import Registry
from cnnlab.data.pairs import batch_pairs
from cnnlab.metric_learning.distances import Distance, EuclideanDistance

MINERS = Registry("pair miner")


# Each miner takes only the options it uses: an option given to a miner that would ignore it is
# an error (`create_miner`), never silently dropped.
@MINERS.register("random")
class RandomPairMiner:
    def __init__(self, balance: bool = True):
        self.balance = balance

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return batch_pairs(labels, balance=self.balance, generator=generator)


@MINERS.register("hard")
class HardPairMiner:
    """All same-person pairs (or each image's `positives` farthest ones) and each image's
    `negatives` nearest different-person images. A pair may be chosen from both of its ends;
    it then counts twice, as both images found it hard."""

    def __init__(self, distance: Distance | None = None, negatives: int = 1, positives: int | None = None):
        if negatives < 1:
            raise ValueError(f"negatives must be >= 1, got {negatives}")
        if positives is not None and positives < 1:
            raise ValueError(f"positives must be >= 1 or None (all), got {positives}")
        self.distance = distance if distance is not None else EuclideanDistance()
        self.negatives, self.positives = int(negatives), positives

    @torch.no_grad()
    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = embeddings.detach().float()
        n = z.shape[0]
        d = self.distance.compute_mat(z, z)
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(n, dtype=torch.bool, device=z.device)
        anchors = torch.arange(n, device=z.device)
        parts_i, parts_j = [], []
        # Positives.
        if self.positives is None:
            i, j = torch.triu_indices(n, n, offset=1, device=z.device)
            keep = same[i, j]
            parts_i.append(i[keep]), parts_j.append(j[keep])
        else:
            far = d.masked_fill(~same | eye, -float("inf"))
            k = min(self.positives, n - 1)
            values, cols = far.topk(k, dim=1)
            ok = torch.isfinite(values)
            parts_i.append(anchors[:, None].expand(-1, k)[ok]), parts_j.append(cols[ok])
        # Negatives: the nearest other-person images of every image.
        near = d.masked_fill(same, float("inf"))
        k = min(self.negatives, n - 1)
        values, cols = near.topk(k, dim=1, largest=False)
        ok = torch.isfinite(values)
        parts_i.append(anchors[:, None].expand(-1, k)[ok]), parts_j.append(cols[ok])
        i, j = torch.cat(parts_i), torch.cat(parts_j)
        return i, j, labels[i] == labels[j]


def create_miner(name: str, **options):
    """The miner `name` with `options`; one it does not take is a ValueError naming it."""
    cls = MINERS.get(name)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unused = sorted(set(options) - accepted)
    if unused:
        raise ValueError(f"the {MINERS.canonical(name)} miner does not use {', '.join(unused)} "
                         f"(it takes {', '.join(sorted(accepted)) or 'no options'})")
    return cls(**options)
