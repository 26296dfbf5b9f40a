"""Nearest-neighbour search in an embedding space: the one k-NN routine that `faces search`,
the retrieval figure and the margin study's outlier counts all use.

Queries are processed in chunks, so a gallery of tens of thousands of embeddings never needs a
full N x N distance matrix in memory at once.
"""
from __future__ import annotations

import numpy as np
import torch

from cnnlab.distances import Distance, create_distance


@torch.no_grad()
def nearest_neighbours(queries: torch.Tensor | np.ndarray, gallery: torch.Tensor | np.ndarray, k: int,
                       distance: Distance | str = "euclidean", *, query_rows: np.ndarray | torch.Tensor | None = None,
                       chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q x k distances, Q x k gallery indices), nearest first.

    `query_rows[q]` is the gallery row of query q when the queries are themselves in the
    gallery (leave-one-out retrieval): that row is never its own neighbour.
    """
    if isinstance(distance, str):
        distance = create_distance(distance)
    q = torch.as_tensor(np.asarray(queries, np.float32) if isinstance(queries, np.ndarray) else queries)
    g = torch.as_tensor(np.asarray(gallery, np.float32) if isinstance(gallery, np.ndarray) else gallery)
    g = g.to(q.device, q.dtype)
    available = g.shape[0] - (1 if query_rows is not None else 0)
    if not 1 <= k <= available:
        raise ValueError(f"k must be in [1, {available}] (gallery size), got {k}")
    rows = None if query_rows is None else torch.as_tensor(np.asarray(query_rows), dtype=torch.int64)
    values, indices = [], []
    for s in range(0, q.shape[0], chunk):
        d = distance.pairwise(q[s:s + chunk], g)
        if rows is not None:
            d[torch.arange(d.shape[0]), rows[s:s + chunk].to(d.device)] = float("inf")
        v, i = d.topk(k, dim=1, largest=False)
        values.append(v.cpu())
        indices.append(i.cpu())
    if not values:
        return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.int64)
    return torch.cat(values), torch.cat(indices)
