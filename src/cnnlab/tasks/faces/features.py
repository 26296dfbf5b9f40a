"""The frozen feature cache of the CPU recipe.

Fine-tuning only the last stages of an ImageNet backbone means the earlier stages compute the
same output for an image in every epoch (frozen weights, BatchNorm in eval mode). Those outputs
are computed once per image and per horizontal flip, under no_grad, and kept on the device;
each step then runs only the trainable stages and the head (`SiameseNet.embed_from`). That is
the whole training signal of partial fine-tuning at a fraction of its cost: on 2 CPU cores the
frozen prefix of Lite0 (Tan and Le 2019) is most of the FLOPs of a forward pass, and all of
the backward pass it would otherwise need through nothing. `cache_frozen_features: auto` uses
it whenever the frozen prefix never changes during a run (`config.cache_stage`).

Computed features are stored in the shared on-disk `ArrayCache` under a key of the frozen
weights, the stage and the images, so a later process (the demo after a benchmark, a tuning
worker) loads them instead of recomputing. Within one process, runs that share them (a margin
study, tuning trials) pass one `FeatureMemo` to each run; nothing is kept alive otherwise.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import numpy as np
import torch

from cnnlab.core.progress import progress_bar
from cnnlab.data.cache import ArrayCache
from cnnlab.data.faces import FaceDataset
from cnnlab.models.siamese import SiameseNet
from cnnlab.models.utils import eval_mode, in_batches, module_device


class PrefixFeatures:
    """Outputs of the frozen backbone stages [0, stage) for some rows of a dataset, and of
    their mirror images, as one device tensor `features[position, flipped]`; `gather` takes
    dataset row numbers."""

    def __init__(self, features: torch.Tensor, rows: np.ndarray, num_rows: int, stage: int):
        self.features, self.stage = features, stage
        # Rows that were not cached point one past the end, so indexing them fails loudly on
        # any device instead of silently reading the last row (what -1 would do).
        position = torch.full((num_rows,), len(rows), dtype=torch.int64)
        position[torch.from_numpy(np.asarray(rows, dtype=np.int64))] = torch.arange(len(rows))
        self.position = position.to(features.device)

    @staticmethod
    def compute(model: SiameseNet, images: np.ndarray, rows: np.ndarray, stage: int, *,
                batch_size: int = 256, progress: bool | None = None) -> torch.Tensor:
        device = module_device(model)

        def batch(rows_slice: slice) -> torch.Tensor:
            x = torch.from_numpy(images[rows[rows_slice]]).to(device).permute(0, 3, 1, 2)
            x = x.contiguous(memory_format=torch.channels_last)
            out = torch.stack([model.features_until(v, stage) for v in (x, x.flip(3))], dim=1).contiguous()
            bar.update(len(x))
            return out

        # Counted in images, so the progress line says images/s (the last batch is smaller).
        with eval_mode(model), progress_bar(total=len(rows), enable=progress, desc="cache frozen features",
                                            unit="img") as bar:
            # No rows: the zero-image batch, so the result still has the features' shape.
            return in_batches(batch, len(rows), batch_size, empty=None) if len(rows) else batch(slice(0, 0))

    def __len__(self) -> int:
        return len(self.features)

    def gather(self, rows: torch.Tensor, flipped: torch.Tensor | None = None) -> torch.Tensor:
        pos = self.position[rows]
        # A readable error on the CPU; on CUDA the check would stop the pipeline at every
        # training step (a device-to-host sync), and the out-of-range index asserts anyway.
        if pos.device.type == "cpu" and bool((pos >= len(self.features)).any()):
            raise ValueError("asked for features of rows that were not cached")
        return self.features[pos, 0 if flipped is None else flipped.long()]


def embed_from_prefix(model: SiameseNet, prefix: PrefixFeatures, rows: torch.Tensor | np.ndarray, *,
                      batch_size: int = 256) -> torch.Tensor:
    """Embeddings of dataset `rows` from their cached prefix features: the same numbers as
    `model.embed` on their pixels (in eval mode: with `flip_tta`, merged with the mirror image's
    own cached features, since cached features cannot be mirrored), without recomputing the
    frozen stages. Runs in the model's current mode; the caller chooses eval."""
    rows = torch.as_tensor(np.asarray(rows) if isinstance(rows, np.ndarray) else rows, dtype=torch.int64)
    rows = rows.to(prefix.features.device)
    tta = model.config.flip_tta and not model.training

    def embed(s: slice) -> torch.Tensor:
        r = rows[s]
        if not tta:
            return model.embed_from(prefix.stage, prefix.gather(r)).float()
        z = [model.embed_from(prefix.stage, prefix.gather(r, torch.full_like(r, v, dtype=torch.bool))).float()
             for v in (False, True)]
        return model.merge_flips(z[0], z[1])

    return in_batches(embed, len(rows), batch_size, empty=torch.zeros(0, model.embedding_dim))


class FeatureMemo:
    """The last computed `PrefixFeatures`, for the runs of one study that share frozen
    weights and people (the runs of a margin study, tuning trials in one process): they reuse
    the device tensor instead of reloading or recomputing it. Owned by the caller, so the
    tensor lives exactly as long as the study; one entry, so at most one is alive at a time."""

    def __init__(self):
        self.key: str | None = None
        self.features: PrefixFeatures | None = None

    def get(self, key: str) -> PrefixFeatures | None:
        return self.features if key == self.key else None

    def put(self, key: str, features: PrefixFeatures) -> None:
        self.key, self.features = key, features

    def clear(self) -> None:
        self.key = self.features = None


def prefix_key(model: SiameseNet, stage: int, dataset: FaceDataset, rows: np.ndarray) -> str:
    """Identifies cached features: the frozen weights themselves (a random init differs by
    seed), the stage, the images (their pixels: a source file edited in place changes them
    under the same path; ~1.5 s for all of LFW at 192 px) and which of them."""
    h = hashlib.sha256(f"{stage}|{dataset.root}|{dataset.spec.cache_spec()}|{len(dataset)}|"
                       f"{module_device(model)}".encode())
    for p in dataset.paths:
        h.update(p.encode())
    h.update(memoryview(np.ascontiguousarray(dataset.images)).cast("B"))
    h.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    for name, tensor in model.backbone.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def cached_prefix(model: SiameseNet, dataset: FaceDataset, rows: np.ndarray, stage: int, *, batch_size: int,
                  progress: bool | None, log: Callable[[str], None], memo: FeatureMemo | None = None
                  ) -> PrefixFeatures:
    """The frozen stages' features of `rows`: from `memo`, else the disk cache, else computed."""
    rows = np.asarray(rows, dtype=np.int64)
    key = prefix_key(model, stage, dataset, rows)
    found = memo.get(key) if memo is not None else None
    if found is not None:
        return found
    if memo is not None:
        memo.clear()  # free the old tensor before building the new one
    start = time.perf_counter()
    cache = ArrayCache()
    arrays = cache.load_or_build("faces-prefix", key, lambda: {"features": PrefixFeatures.compute(
        model, dataset.images, rows, stage, batch_size=batch_size, progress=progress).cpu().numpy()})
    features = torch.from_numpy(arrays["features"]).to(module_device(model))
    prefix = PrefixFeatures(features, rows, len(dataset), stage)
    log(f"{'loaded cached' if cache.last_hit else 'computed'} frozen stages 0-{stage - 1} for {len(rows)} "
        f"images x 2 flips ({tuple(features.shape[2:])}, {features.numel() * 4 / 2**20:.0f} MiB) "
        f"in {time.perf_counter() - start:.0f} s")
    if memo is not None:
        memo.put(key, prefix)
    return prefix
