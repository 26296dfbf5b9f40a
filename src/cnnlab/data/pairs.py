"""Pairs for Siamese training and evaluation: all pairs from one embedding pass.

Batches hold P people x K images each (`cnnlab.data.samplers.PKSampler`, the "PK" sampling of
Hermans, Beyer and Leibe 2017), so every batch contains same-person pairs; `batch_pairs` then
forms pairs among the batch's embeddings (Hadsell, Chopra and LeCun 2006 train on pairs;
forming them inside the batch embeds every image once per step). `sample_pairs` draws
evaluation pairs like LFW's (Huang et al. 2007).
"""
from __future__ import annotations

import numpy as np
import torch

from cnnlab.data.samplers import as_label_array


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
    labels = as_label_array(labels)
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
