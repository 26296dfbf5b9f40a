"""Pair sampling for Siamese training: P x K batches, all pairs from one embedding pass.

Batches hold P people x K images each (the "PK" sampling of Hermans, Beyer and Leibe 2017,
"In Defense of the Triplet Loss for Person Re-Identification"), so every batch contains
same-person pairs; `batch_pairs` then forms pairs among the batch's embeddings (Hadsell, Chopra
and LeCun 2006 train on pairs; forming them inside the batch embeds every image once per step).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from cnnlab.errors import CnnlabError


def _as_numpy_labels(labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise CnnlabError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


class PKSampler:
    """Index batches of `p` people x up to `k` images, deterministic per (seed, epoch).

    Only people with at least 2 images are drawn as the P people (a single image gives no
    same-person pair). A person with fewer than `k` images contributes all of them: images
    are never repeated within a batch, because a repeated image would be embedded twice and
    pair with itself at distance 0, a free positive. Batches can therefore be smaller than
    p * k. Each epoch is a seeded permutation of the eligible people, cut into groups of `p`
    (the leftover < p people wait for the next epoch's permutation). People with exactly one
    image can join as extra negatives: `singles_per_batch` of them per batch, cycled.
    Yields CPU int64 tensors of row indices into `labels`.
    """

    def __init__(self, labels, p: int, k: int, seed: int = 0, *, singles_per_batch: int = 0):
        if p < 2:
            raise CnnlabError(f"PKSampler needs p >= 2 people per batch (for different-person pairs), got {p}")
        if k < 2:
            raise CnnlabError(f"PKSampler needs k >= 2 images per person (for same-person pairs), got {k}")
        if singles_per_batch < 0:
            raise CnnlabError(f"singles_per_batch must be >= 0, got {singles_per_batch}")
        self.labels = _as_numpy_labels(labels)
        self.p, self.k, self.seed = int(p), int(k), int(seed)
        self.singles_per_batch = int(singles_per_batch)
        self.epoch = 0
        order = np.argsort(self.labels, kind="stable")
        people, starts, counts = np.unique(self.labels[order], return_index=True, return_counts=True)
        self._rows = {int(person): order[s:s + c] for person, s, c in zip(people, starts, counts)}
        self.eligible = people[counts >= 2]
        self.singles = np.array([self._rows[int(q)][0] for q in people[counts == 1]], dtype=np.int64)
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
        singles = self.singles[rng.permutation(len(self.singles))] if len(self.singles) else self.singles
        out = []
        for b in range(len(self)):
            parts = []
            for person in people[b * self.p:(b + 1) * self.p]:
                rows = self._rows[int(person)]
                parts.append(rows if len(rows) <= self.k else rng.choice(rows, self.k, replace=False))
            if self.singles_per_batch and len(singles):
                take = np.arange(b * self.singles_per_batch, (b + 1) * self.singles_per_batch) % len(singles)
                parts.append(singles[np.unique(take)])
            out.append(torch.from_numpy(np.concatenate(parts).astype(np.int64)))
        return out

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.batches(self.epoch))


def batch_pairs(labels: torch.Tensor, balance: bool = True, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(i, j, same) over positions of one batch's embeddings, i < j, on `labels`' device.

    `balance=False`: every unordered pair. `balance=True` (default): every same-person pair
    and an equal number of different-person pairs drawn without replacement with `generator`
    (all negatives are kept when the batch has no positives, or fewer negatives than positives).
    """
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    n = labels.shape[0]
    i, j = torch.triu_indices(n, n, offset=1, device=labels.device)
    same = labels[i] == labels[j]
    if not balance:
        return i, j, same
    pos = torch.nonzero(same).flatten()
    neg = torch.nonzero(~same).flatten()
    if len(pos) == 0 or len(neg) <= len(pos):
        return i, j, same
    perm_device = generator.device if generator is not None else torch.device("cpu")
    pick = torch.randperm(len(neg), generator=generator, device=perm_device)[:len(pos)].to(labels.device)
    keep = torch.cat([pos, neg[pick]]).sort().values
    return i[keep], j[keep], same[keep]


def sample_pairs(labels, n_matched: int, n_mismatched: int | None = None, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct evaluation pairs (i, j, same) among `labels` (e.g. the validation people),
    like the LFW protocol's: matched pairs pick a person with >= 2 images then two of their
    images; mismatched pairs pick two different people then one image each. Seeded. Returns
    fewer pairs of a kind only when fewer distinct ones exist."""
    labels = _as_numpy_labels(labels)
    n_mismatched = n_matched if n_mismatched is None else n_mismatched
    rng = np.random.default_rng(seed)
    people, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    rows = np.split(order, np.cumsum(counts)[:-1])
    multi = np.flatnonzero(counts >= 2)
    available = int((counts * (counts - 1) // 2).sum())
    n_mismatched = min(n_mismatched, int((len(labels) ** 2 - (counts ** 2).sum()) // 2))
    matched: set[tuple[int, int]] = set()
    target = min(n_matched, available)
    while len(matched) < target:
        person = rows[multi[rng.integers(len(multi))]]
        a, b = rng.choice(person, 2, replace=False)
        matched.add((min(a, b), max(a, b)))
    mismatched: set[tuple[int, int]] = set()
    while len(mismatched) < n_mismatched:
        p1, p2 = rng.choice(len(people), 2, replace=False)
        a, b = rows[p1][rng.integers(counts[p1])], rows[p2][rng.integers(counts[p2])]
        mismatched.add((min(a, b), max(a, b)))
    pairs = sorted(matched) + sorted(mismatched)
    i = np.array([a for a, _ in pairs], dtype=np.int64)
    j = np.array([b for _, b in pairs], dtype=np.int64)
    same = np.concatenate([np.ones(len(matched), bool), np.zeros(len(mismatched), bool)])
    return i, j, same
