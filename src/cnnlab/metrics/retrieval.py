"""Nearest-neighbour search in an embedding space: the one k-NN routine that `faces search`,
the retrieval figure and the margin study's outlier counts all use.

Queries are processed in chunks, so a gallery of tens of thousands of embeddings never needs a
full N x N distance matrix in memory at once.

`backend="faiss"` runs the same exhaustive search with FAISS's flat index (the optional
`faiss-cpu` package: Johnson, Douze and Jegou 2019, "Billion-scale similarity search with GPUs").
Loading a gallery into FAISS copies it, so a caller that searches one gallery many times (a
gallery index, the HTTP service) builds a `FaissGallery` once and passes it as `gallery`.
`backend="auto"` picks FAISS for galleries of at least `FAISS_MIN_ROWS` rows when it is
installed: one query against 100,000 embeddings took a fraction of the torch path's time
(docs/performance.md, `benchmarks/bench_embed.py --search`). Both are exhaustive, so they return the
same neighbours.
"""
from __future__ import annotations

import numpy as np
import torch

from cnnlab.core.errors import CnnlabError
from cnnlab.metric_learning.distances import CosineDistance, Distance, EuclideanDistance, create_distance

BACKENDS = ("torch", "faiss", "auto")
FAISS_MIN_ROWS = 50_000



class BadK(CnnlabError, ValueError):
    """A neighbour count outside 1..gallery size: a user error (CnnlabError: one line in the CLI)
    and a ValueError for library callers."""


def check_k(k: int, available: int, what: str = "gallery size") -> int:
    """The one check of how many neighbours may be asked for."""
    if not 1 <= k <= available:
        raise BadK(f"k must be in 1..{available} ({what}), got {k}")
    return k


def clamp_k(k: int, gallery_size: int, limit: int | None = None) -> int:
    """How many neighbours a search of a gallery returns, the one rule of `faces search` and the
    HTTP service's /search: k is at least 1 and at most `limit` (the service's `max_k`; the CLI
    has none), and a k above the gallery's size returns the whole gallery, ranked."""
    if k < 1:
        raise BadK(f"k must be >= 1, got {k}")
    if limit is not None and k > limit:
        raise BadK(f"k must be at most {limit} (the most one search returns), got {k}")
    return min(k, gallery_size)

def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(backend: str, rows: int, distance: Distance | str = "euclidean",
                   leave_one_out: bool = False) -> str:
    """"torch" or "faiss" for a search of a gallery of `rows` embeddings."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    if isinstance(distance, str):
        distance = create_distance(distance)
    supported = isinstance(distance, (EuclideanDistance, CosineDistance))
    return "faiss" if supported and not leave_one_out and rows >= FAISS_MIN_ROWS and faiss_available() else "torch"


class FaissGallery:
    """A gallery loaded once into a FAISS flat index: squared L2 for the Euclidean distance,
    inner products of unit vectors for the cosine distance. Pass it as `gallery`."""

    def __init__(self, gallery: torch.Tensor | np.ndarray, distance: Distance | str = "euclidean"):
        try:
            import faiss
        except ImportError:
            raise ValueError("backend 'faiss' needs the faiss-cpu package (pip install 'cnnlab[faiss]')") from None
        self.distance = create_distance(distance) if isinstance(distance, str) else distance
        g = _float_copy(gallery)
        if g.ndim != 2:
            raise ValueError(f"expected N x D gallery embeddings, got shape {g.shape}")
        if isinstance(self.distance, CosineDistance):
            faiss.normalize_L2(g)
            self.index = faiss.IndexFlatIP(g.shape[1])
        elif isinstance(self.distance, EuclideanDistance):
            self.index = faiss.IndexFlatL2(g.shape[1])
        else:
            raise ValueError(f"backend 'faiss' supports the euclidean and cosine distances, "
                             f"not {type(self.distance).__name__}")
        self.index.add(g)
        self.shape = g.shape

    def search(self, queries, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        import faiss
        q = _float_copy(queries)
        if q.ndim != 2 or q.shape[1] != self.shape[1]:
            raise ValueError(f"expected Q x {self.shape[1]} query embeddings, got shape {q.shape}")
        check_k(k, self.shape[0])
        if isinstance(self.distance, CosineDistance):
            faiss.normalize_L2(q)
            similarity, rows = self.index.search(q, k)
            values = 1.0 - similarity
        else:
            squared, rows = self.index.search(q, k)
            values = np.sqrt(np.maximum(squared, self.distance.eps))  # EuclideanDistance's floor at 0
        return torch.from_numpy(np.ascontiguousarray(values, np.float32)), torch.from_numpy(rows.astype(np.int64))


def _float_copy(x) -> np.ndarray:
    x = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32)
    return np.array(x, dtype=np.float32, order="C")  # a copy: FAISS normalises in place


@torch.no_grad()
def nearest_neighbours(queries: torch.Tensor | np.ndarray, gallery: torch.Tensor | np.ndarray | FaissGallery, k: int,
                       distance: Distance | str = "euclidean", *, query_rows: np.ndarray | torch.Tensor | None = None,
                       chunk: int = 1024, backend: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """(Q x k distances, Q x k gallery indices), nearest first.

    `query_rows[q]` is the gallery row of query q when the queries are themselves in the
    gallery (leave-one-out retrieval): that row is never its own neighbour (torch backend).
    """
    if isinstance(distance, str):
        distance = create_distance(distance)
    if isinstance(gallery, FaissGallery):
        if type(gallery.distance) is not type(distance):
            raise ValueError(f"the FAISS gallery was built for {type(gallery.distance).__name__}, "
                             f"not {type(distance).__name__}")
        backend = "faiss"
    backend = choose_backend(backend, gallery.shape[0], distance, leave_one_out=query_rows is not None)
    if backend == "faiss":
        if query_rows is not None:
            raise ValueError("backend 'faiss' does not take query_rows; use the torch backend")
        searcher = gallery if isinstance(gallery, FaissGallery) else FaissGallery(gallery, distance)
        return searcher.search(queries, k)
    q = torch.as_tensor(np.asarray(queries, np.float32) if isinstance(queries, np.ndarray) else queries)
    g = torch.as_tensor(np.asarray(gallery, np.float32) if isinstance(gallery, np.ndarray) else gallery)
    g = g.to(q.device, q.dtype)
    available = g.shape[0] - (1 if query_rows is not None else 0)
    check_k(k, available)
    rows = None if query_rows is None else torch.as_tensor(np.asarray(query_rows), dtype=torch.int64)
    values, indices = [], []
    for s in range(0, q.shape[0], chunk):
        d = distance.compute_mat(q[s:s + chunk], g)
        if rows is not None:
            d[torch.arange(d.shape[0]), rows[s:s + chunk].to(d.device)] = float("inf")
        v, i = d.topk(k, dim=1, largest=False)
        values.append(v.cpu())
        indices.append(i.cpu())
    if not values:
        return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.int64)
    return torch.cat(values), torch.cat(indices)


def retrieval_scores(embeddings: torch.Tensor | np.ndarray, labels, distance: Distance | str = "euclidean",
                     *, chunk: int = 1024) -> dict:
    """Leave-one-out retrieval over one set of embeddings, as pytorch-metric-learning's
    `AccuracyCalculator` defines it (Musgrave, Belongie and Lim 2020, "A Metric Learning
    Reality Check"): every image whose person has R >= 1 other images queries all the others.

    - precision_at_1: share of queries whose nearest other image is the same person;
    - r_precision: share of same-person images among the R nearest;
    - map_at_r: mean over the R nearest of the precision at each same-person hit, divided by R
      (1.0 only when all R come first, in any order).
    Queries whose person has a single image are left out (`queries` counts those used).
    """
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    z = torch.as_tensor(np.asarray(embeddings, np.float32) if isinstance(embeddings, np.ndarray) else embeddings)
    counts = torch.bincount(labels)
    others = counts[labels] - 1
    rows = torch.nonzero(others > 0).flatten()
    if len(rows) == 0:
        return {"queries": 0, "precision_at_1": float("nan"), "r_precision": float("nan"), "map_at_r": float("nan")}
    k = int(others.max())
    p1 = rp = mapr = 0.0
    for s in range(0, len(rows), chunk):
        q = rows[s:s + chunk]
        _, idx = nearest_neighbours(z[q], z, k, distance, query_rows=q.numpy(), chunk=chunk)
        hit = (labels[idx] == labels[q][:, None]).double()              # Q x k
        r = others[q].double()
        within = (torch.arange(k)[None, :] < r[:, None]).double()       # the first R of each row
        hit = hit * within
        precision = hit.cumsum(1) / torch.arange(1, k + 1, dtype=torch.float64)[None, :]
        p1 += float(hit[:, 0].sum())
        rp += float((hit.sum(1) / r).sum())
        mapr += float(((precision * hit).sum(1) / r).sum())
    n = len(rows)
    return {"queries": n, "precision_at_1": p1 / n, "r_precision": rp / n, "map_at_r": mapr / n}
