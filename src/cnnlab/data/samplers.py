"""P x K batch sampling (Hermans, Beyer and Leibe 2017, "In Defense of the Triplet Loss for
Person Re-Identification"): every batch holds P people with up to K images each, so every
batch contains same-person pairs for a pair loss to learn from."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from cnnlab.core.errors import CnnlabError


def as_label_array(labels) -> np.ndarray:
    """Labels (array, list or tensor) as a 1-D int64 NumPy array, or a CnnlabError."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise CnnlabError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


class PKSampler:
    """Index batches of `p` people x up to `k` images, deterministic per (seed, epoch).

    Only people with at least 2 images are drawn as the P (a single image gives no same-person
    pair). A person with fewer than `k` images contributes all of them: images are never
    repeated within a batch, because a repeated image would be embedded twice and pair with
    itself at distance 0, a free positive. Batches can therefore be smaller than p * k. Each
    epoch is a permutation of the eligible people seeded by (seed, epoch), cut into groups of
    `p`: the leftover < p people of one epoch are drawn in other epochs' orders, so over a few
    epochs everyone trains.

    With `singles` > 0 each batch also holds that many images of people who have one image, as
    impostors only: more identities per batch for a miner's negatives, and images a pair loss
    would otherwise never see. They come in a seeded order per epoch, cycling when an epoch
    needs more than there are, never twice in one batch.

    Yields CPU int64 tensors of row indices into `labels`.
    """

    def __init__(self, labels, p: int, k: int, seed: int = 0, singles: int = 0):
        if p < 2:
            raise CnnlabError(f"PKSampler needs p >= 2 people per batch (for different-person pairs), got {p}")
        if k < 2:
            raise CnnlabError(f"PKSampler needs k >= 2 images per person (for same-person pairs), got {k}")
        if singles < 0:
            raise CnnlabError(f"PKSampler needs singles >= 0 single-image people per batch, got {singles}")
        self.labels = as_label_array(labels)
        self.p, self.k, self.seed = int(p), int(k), int(seed)
        self.epoch = 0
        order = np.argsort(self.labels, kind="stable")
        people, starts, counts = np.unique(self.labels[order], return_index=True, return_counts=True)
        self._rows = {int(person): order[s:s + c] for person, s, c in zip(people, starts, counts)}
        self.eligible = people[counts >= 2]
        self._single_rows = order[starts[counts == 1]]
        self._singles = len(self._single_rows)
        # Never more than there are, so that no image is in a batch twice.
        self.singles_per_batch = min(int(singles), self._singles)
        if len(self.eligible) < self.p:
            raise CnnlabError(f"PKSampler needs at least p={self.p} people with >= 2 images, "
                              f"found {len(self.eligible)}")

    def __len__(self) -> int:
        return len(self.eligible) // self.p

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batches(self, epoch: int) -> list[torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(epoch)])
        people = self.eligible[rng.permutation(len(self.eligible))]
        # Drawn even when no batch takes singles: the people's image choices below, and so every
        # seeded result, are then the same with and without them.
        singles = rng.permutation(self._singles) if self._singles else None
        s, out = self.singles_per_batch, []
        for b in range(len(self)):
            parts = []
            for person in people[b * self.p:(b + 1) * self.p]:
                rows = self._rows[int(person)]
                parts.append(rows if len(rows) <= self.k else rng.choice(rows, self.k, replace=False))
            if s:
                parts.append(self._single_rows[singles[(b * s + np.arange(s)) % self._singles]])
            out.append(torch.from_numpy(np.concatenate(parts).astype(np.int64)))
        return out

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.batches(self.epoch))
