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

Cached features leave no pixels to augment, so pixel augmentation happens before the cache:
with `views` = K > 0, each training row also gets the frozen features of K augmented versions
of its image (`cnnlab.data.augment`), each with its mirror, and a training step draws one of
the 1 + K versions of each image and a flip (`PrefixFeatures.gather`). The views are a second
cache entry beside the originals', whose entry is the one a run without views uses.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable

import numpy as np
import torch

from cnnlab.core.progress import progress_bar
from cnnlab.data.augment import AugmentSettings, augment_views
from cnnlab.data.cache import ArrayCache
from cnnlab.data.faces import FaceDataset
from cnnlab.models.siamese import SiameseNet
from cnnlab.models.utils import eval_mode, in_batches, module_device

# The seed of the augmented views: a property of the cached data, not of a run, so runs of
# other seeds (a seed study, tuning trials) share one cache entry and differ in what they draw.
VIEWS_SEED = 0


def _positions(rows: np.ndarray, num_rows: int, device: torch.device) -> torch.Tensor:
    """Dataset row -> its position among `rows`. Rows that were not cached point one past the
    end, so indexing them fails loudly on any device instead of silently reading the last row
    (what -1 would do)."""
    position = torch.full((num_rows,), len(rows), dtype=torch.int64)
    position[torch.from_numpy(np.asarray(rows, dtype=np.int64))] = torch.arange(len(rows))
    return position.to(device)


def _with_mirror(model: SiameseNet, images: np.ndarray, stage: int) -> torch.Tensor:
    """Frozen features of uint8 N x H x W x 3 images and of their mirror images: N x 2 x C x h x w."""
    x = torch.from_numpy(images).to(module_device(model)).permute(0, 3, 1, 2)
    x = x.contiguous(memory_format=torch.channels_last)
    return torch.stack([model.features_until(v, stage) for v in (x, x.flip(3))], dim=1).contiguous()


class PrefixFeatures:
    """Outputs of the frozen backbone stages [0, stage) for some rows of a dataset, and of
    their mirror images, as one device tensor `features[position, flipped]`; `gather` takes
    dataset row numbers. With K augmented views of the rows in `view_rows`, a second tensor
    `views[view_position, view - 1, flipped]` (float16, `compute_views`)."""

    def __init__(self, features: torch.Tensor, rows: np.ndarray, num_rows: int, stage: int, *,
                 views: torch.Tensor | None = None, view_rows: np.ndarray | None = None):
        self.features, self.stage = features, stage
        self.position = _positions(rows, num_rows, features.device)
        self.views = views if views is not None and views.shape[1] else None
        self.view_position = None
        if self.views is not None:
            if view_rows is None or len(view_rows) != len(views):
                raise ValueError("views need their rows: one per view row")
            self.view_position = _positions(view_rows, num_rows, features.device)

    @property
    def num_views(self) -> int:
        """K: the augmented views of each row in `view_rows`, besides the original."""
        return 0 if self.views is None else self.views.shape[1]

    @staticmethod
    def compute(model: SiameseNet, images: np.ndarray, rows: np.ndarray, stage: int, *,
                batch_size: int = 256, progress: bool | None = None) -> torch.Tensor:
        def batch(rows_slice: slice) -> torch.Tensor:
            out = _with_mirror(model, images[rows[rows_slice]], stage)
            bar.update(len(out))
            return out

        # Counted in images, so the progress line says images/s (the last batch is smaller).
        with eval_mode(model), progress_bar(total=len(rows), enable=progress, desc="cache frozen features",
                                            unit="img") as bar:
            # No rows: the zero-image batch, so the result still has the features' shape.
            return in_batches(batch, len(rows), batch_size, empty=None) if len(rows) else batch(slice(0, 0))

    @staticmethod
    def compute_views(model: SiameseNet, images: np.ndarray, rows: np.ndarray, stage: int, views: int,
                      settings: AugmentSettings, *, seed: int = VIEWS_SEED, batch_size: int = 256,
                      progress: bool | None = None) -> torch.Tensor:
        """The frozen features of `views` augmented versions of each image of `rows` and of
        their mirrors, as a float16 (len(rows), views, 2, C, h, w) CPU tensor. View v of a row
        is `augment_views`' (seeded by the row number), whatever the batch size. Half precision:
        the views take K times the originals' memory, and saving an entry holds ~3 copies of it
        (`ArrayCache` writes an in-memory npz), which in float32 at K = 4 would be ~19 GiB for
        17,000 images; float16's relative error (5e-4) is far below what the augmentation
        changes in a view."""
        rows = np.asarray(rows, dtype=np.int64)
        step = max(1, batch_size // max(views, 1))  # rows per forward pass: `batch_size` images
        out = None
        with eval_mode(model), progress_bar(total=len(rows) * views, enable=progress, unit="img",
                                            desc=f"cache frozen features of {views} augmented views") as bar:
            for start in range(0, max(len(rows), 1), step):
                chunk = rows[start:start + step]
                pixels = augment_views(images[chunk], views, seed, ids=chunk, settings=settings)
                f = _with_mirror(model, pixels.reshape(-1, *pixels.shape[2:]), stage)
                f = f.reshape(len(chunk), views, *f.shape[1:]).to("cpu", torch.float16)
                if not bool(torch.isfinite(f).all()):
                    raise ValueError("frozen features overflow float16; cache the views in float32")
                if out is None:  # the first batch gives the features' shape (no rows: an empty one)
                    out = torch.empty((len(rows), *f.shape[1:]), dtype=torch.float16)
                out[start:start + len(chunk)] = f
                bar.update(f.shape[0] * views)
        return out

    def __len__(self) -> int:
        return len(self.features)

    def gather(self, rows: torch.Tensor, flipped: torch.Tensor | None = None,
               view: torch.Tensor | None = None) -> torch.Tensor:
        """Features of dataset `rows`, mirrored where `flipped`; with `view` (0: the original,
        v in 1..K: augmented view v) each row's drawn version, as float32. Two gathers and a
        select rather than a gather of the drawn rows only: no device-to-host sync per step."""
        pos = self.position[rows]
        # A readable error on the CPU; on CUDA the check would stop the pipeline at every
        # training step (a device-to-host sync), and the out-of-range index asserts anyway.
        if pos.device.type == "cpu" and bool((pos >= len(self.features)).any()):
            raise ValueError("asked for features of rows that were not cached")
        flip = 0 if flipped is None else flipped.long()
        x = self.features[pos, flip]
        if view is None or self.views is None:
            if view is not None and pos.device.type == "cpu" and bool((view > 0).any()):
                raise ValueError("asked for augmented views of features cached without them")
            return x
        augmented = view > 0
        vpos = self.view_position[rows]
        if vpos.device.type == "cpu" and bool((augmented & (vpos >= len(self.views))).any()):
            raise ValueError("asked for augmented views of rows cached without them")
        # Rows drawn at their original read any valid view, discarded by the select.
        y = self.views[torch.where(augmented, vpos, 0), (view - 1).clamp(min=0), flip].float()
        return torch.where(augmented.view(-1, *[1] * (x.ndim - 1)), y, x)


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


def views_key(key: str, view_rows: np.ndarray, views: int, settings: AugmentSettings,
              seed: int = VIEWS_SEED) -> str:
    """Identifies cached augmented views: the originals' `prefix_key`, which rows have views,
    how many, and every augmentation setting."""
    h = hashlib.sha256(f"{key}|{views}|{seed}|{json.dumps(settings.spec(), sort_keys=True)}".encode())
    h.update(np.ascontiguousarray(view_rows, dtype=np.int64).tobytes())
    return h.hexdigest()[:20]


def cached_prefix(model: SiameseNet, dataset: FaceDataset, rows: np.ndarray, stage: int, *, batch_size: int,
                  progress: bool | None, log: Callable[[str], None], memo: FeatureMemo | None = None,
                  views: int = 0, view_rows: np.ndarray | None = None, augment: AugmentSettings | None = None
                  ) -> PrefixFeatures:
    """The frozen stages' features of `rows`: from `memo`, else the disk cache, else computed.
    `views` > 0: also those of that many augmented versions of each of `view_rows` (a subset of
    `rows`: the rows training draws), with `augment`'s settings (default `AugmentSettings()`)."""
    rows = np.asarray(rows, dtype=np.int64)
    key = prefix_key(model, stage, dataset, rows)
    settings = augment or AugmentSettings()
    if views:
        view_rows = np.asarray(rows if view_rows is None else view_rows, dtype=np.int64)
        if not np.isin(view_rows, rows).all():
            raise ValueError("view_rows must be cached rows")
    memo_key = views_key(key, view_rows, views, settings) if views else key
    found = memo.get(memo_key) if memo is not None else None
    if found is not None:
        return found
    if memo is not None:
        memo.clear()  # free the old tensor before building the new one
    start = time.perf_counter()
    cache = ArrayCache()
    arrays = cache.load_or_build("faces-prefix", key, lambda: {"features": PrefixFeatures.compute(
        model, dataset.images, rows, stage, batch_size=batch_size, progress=progress).cpu().numpy()})
    loaded = cache.last_hit
    device = module_device(model)
    features = torch.from_numpy(arrays["features"]).to(device)
    del arrays
    log(f"{'loaded cached' if loaded else 'computed'} frozen stages 0-{stage - 1} for {len(rows)} "
        f"images x 2 flips ({tuple(features.shape[2:])}, {features.numel() * 4 / 2**20:.0f} MiB) "
        f"in {time.perf_counter() - start:.0f} s")
    augmented = None
    if views:
        start = time.perf_counter()
        arrays = cache.load_or_build("faces-prefix-views", memo_key, lambda: {"views": PrefixFeatures.compute_views(
            model, dataset.images, view_rows, stage, views, settings, batch_size=batch_size,
            progress=progress).numpy()})
        augmented = torch.from_numpy(arrays.pop("views")).to(device)
        log(f"{'loaded cached' if cache.last_hit else 'computed'} frozen stages 0-{stage - 1} for {views} "
            f"augmented views of {len(view_rows)} images x 2 flips (float16, "
            f"{augmented.numel() * 2 / 2**20:.0f} MiB) in {time.perf_counter() - start:.0f} s")
    prefix = PrefixFeatures(features, rows, len(dataset), stage, views=augmented, view_rows=view_rows)
    if memo is not None:
        memo.put(memo_key, prefix)
    return prefix
