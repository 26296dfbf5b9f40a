"""Siamese face verification as an engine task, and the LFW runs built on it.

The model is `cnnlab.models.siamese.SiameseNet` (Bromley et al. 1993) trained with the
contrastive loss of Hadsell, Chopra and LeCun (2006) on pairs formed inside P x K batches
(Hermans, Beyer and Leibe 2017). Runs follow LFW's protocols (Huang et al. 2007): View 1
trains on DevTrain people, selects and calibrates on a seeded people-disjoint validation
split of them, and scores the 1,000 DevTest pairs once; View 2 trains ten times, on nine
folds' people, and tests on the tenth.

The CPU recipe. Fine-tuning only the last stages of an ImageNet backbone means the earlier
stages compute the same output for an image in every epoch (frozen weights, BatchNorm in eval
mode). Those outputs are computed once per image and per horizontal flip, under no_grad, and
kept on the device; each step then runs only the trainable stages and the head. That is the
whole training signal of partial fine-tuning at a fraction of its cost (on 2 CPU cores the
frozen prefix of Lite0 is most of the FLOPs of a forward pass and all of the backward pass it
would otherwise need through nothing). It is used automatically whenever the frozen prefix
never changes during a run (`cache_frozen_features: auto`); full fine-tuning (GPU) takes the
ordinary pixel path through the same engine and the same task.
"""
from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.io import save_yaml, to_plain, write_json
from cnnlab.data.faces import FaceDataset, FacePreprocess, load_identity_folders
from cnnlab.data.loader import random_crop, random_flip
from cnnlab.data.pairs import PKSampler, batch_pairs, sample_pairs
from cnnlab.distances import DISTANCES, create_distance
from cnnlab.engine import Engine, TrainConfig, seed_everything
from cnnlab.errors import CnnlabError
from cnnlab.losses import ContrastiveLoss
from cnnlab.metrics.verification import VerificationReport, best_threshold, evaluate
from cnnlab.models.siamese import SiameseConfig, SiameseNet, save_model

MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
TEST_EMBEDDINGS = "test_embeddings.npz"
TEST_PAIRS = "devtest_pairs.npz"
CACHE_MODES = ("auto", "on", "off")


@dataclass
class FaceTrainConfig:
    """Everything a face training run depends on. The field names are also the names of the
    tuner's search space (lr, batch_size, embedding_dim, margin, weight_decay, freeze_epochs)."""
    # model
    backbone: str = "tf_efficientnet_lite0"
    weights: str = "imagenet"        # imagenet | none | path to a backbone state dict
    embedding_dim: int = 128
    head: str = "linear"             # linear | mlp
    normalize: bool = True           # L2-normalised embeddings: distances in [0, 2]
    # loss
    margin: float = 1.0              # contrastive margin m
    distance: str = "euclidean"      # euclidean | cosine
    # data
    # 192 px beat 160 and 128 on View 1 validation AUC (BENCHMARKS.md), upsampling the crop.
    input_size: int = 192            # side of the square the network sees
    crop: int = 150                  # centre crop of the 250 px LFW image (face ~110 px) before resizing
    flip: bool = True                # random horizontal flip
    shift: int = 0                   # random translation in pixels (pixel path only)
    val_fraction: float = 0.1        # share of the training people held out for selection/calibration
    val_pairs: int = 500             # matched (and as many mismatched) validation pairs
    # batches: batch_size // k people x k images each
    batch_size: int = 64
    k: int = 4
    balance_pairs: bool = True       # as many different-person pairs as same-person ones per batch
    # schedule (the engine's optimizer and schedule)
    epochs: int = 15
    lr: float = 1e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup: float = 0.1
    freeze_epochs: int = 0           # epochs with the whole backbone frozen (head only) first
    # 4 = the last three block groups + the final 1x1 conv (~3.2M of Lite0's 3.4M weights);
    # fewer trainable stages gave a lower validation AUC at the same time budget.
    trainable_stages: int = 4        # backbone stages fine-tuned after that, from the end; -1 = all
    backbone_lr_scale: float = 1.0   # backbone lr = lr * this (the head gets lr)
    cache_frozen_features: str = "auto"  # auto | on | off (see the module docstring)
    select_best: bool = True         # keep the epoch with the best validation AUC
    eval_batch_size: int = 256
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    progress: bool | None = None

    def __post_init__(self):
        self.weights = str(self.weights)
        checks = [
            (self.embedding_dim >= 1, f"embedding_dim must be >= 1, got {self.embedding_dim}"),
            (self.margin > 0, f"margin must be > 0, got {self.margin}"),
            (self.distance in DISTANCES, f"distance must be one of {', '.join(DISTANCES.names())}, got {self.distance!r}"),
            (self.input_size >= 32, f"input_size must be >= 32, got {self.input_size}"),
            (self.crop >= 1, f"crop must be >= 1 pixel, got {self.crop}"),
            (self.shift >= 0, f"shift must be >= 0, got {self.shift}"),
            (0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), got {self.val_fraction}"),
            (self.val_pairs >= 1, f"val_pairs must be >= 1, got {self.val_pairs}"),
            (self.k >= 2, f"k (images per person in a batch) must be >= 2, got {self.k}"),
            (self.batch_size >= 2 * self.k, f"batch_size must hold at least 2 people of k={self.k} images, "
                                            f"got {self.batch_size}"),
            (self.freeze_epochs >= 0, f"freeze_epochs must be >= 0, got {self.freeze_epochs}"),
            (self.trainable_stages >= -1, f"trainable_stages must be >= 0 or -1 (all), got {self.trainable_stages}"),
            (self.backbone_lr_scale >= 0, f"backbone_lr_scale must be >= 0, got {self.backbone_lr_scale}"),
            (self.cache_frozen_features in CACHE_MODES,
             f"cache_frozen_features must be one of {', '.join(CACHE_MODES)}, got {self.cache_frozen_features!r}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.model_config()
        self.train_config()  # the engine's own checks (lr, optimizer, schedule, ...)

    @property
    def people_per_batch(self) -> int:
        return self.batch_size // self.k

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer,
                           weight_decay=self.weight_decay, schedule=self.schedule, warmup=self.warmup,
                           device=self.device, precision=self.precision, seed=self.seed, progress=self.progress)

    def model_config(self) -> SiameseConfig:
        return SiameseConfig(backbone=self.backbone, embedding_dim=self.embedding_dim, weights=self.weights,
                             normalize=self.normalize, head=self.head, input_size=self.input_size)

    def preprocess(self) -> FacePreprocess:
        return FacePreprocess(crop=self.crop, size=self.input_size)


# Settings a preset changes from the FaceTrainConfig defaults (flags and --config override them).
PRESETS = {
    # The default recipe: the last Lite0 stages fine-tuned on cached early-stage features.
    "cpu": {},
    # `make demo`: the same recipe with fewer epochs (about 10 minutes on 2 idle CPU cores).
    "demo": {"epochs": 6},
    # End-to-end fine-tuning from pixels (GPU): head alone for one epoch, then the whole backbone.
    "finetune": {"trainable_stages": -1, "freeze_epochs": 1, "shift": 8, "epochs": 20,
                 "backbone_lr_scale": 0.3, "batch_size": 128},
}


def preset_config(name: str, **overrides) -> FaceTrainConfig:
    if name not in PRESETS:
        raise CnnlabError(f"unknown face preset {name!r}; valid: {', '.join(PRESETS)}")
    return FaceTrainConfig(**{**PRESETS[name], **overrides})


# ---------------------------------------------------------------------------- model pieces
def run_stages(model: SiameseNet, x: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
    """Backbone stages [start, stop) on `x` (normalised pixels when start == 0)."""
    for stage in model.backbone_stages()[start:stop]:
        if isinstance(stage, nn.ModuleList):
            for layer in stage:
                x = layer(x)
        else:
            x = stage(x)
    return x


def embed_from_stage(model: SiameseNet, x: torch.Tensor, start: int) -> torch.Tensor:
    """Embeddings from the output of stage `start - 1` (start == 0: from RGB pixels, i.e.
    `model.embed`). Same computation as `embed`, split where the cached prefix ends."""
    if start == 0:
        return model.embed(x)
    features = model.backbone.forward_head(run_stages(model, x, start))
    z = model.head(features)
    return F.normalize(z, dim=1) if model.config.normalize else z


def frozen_prefix(config: FaceTrainConfig, num_stages: int) -> int:
    """How many leading backbone stages stay frozen for the whole run (0: none)."""
    if config.freeze_epochs >= config.epochs:
        return num_stages                       # the backbone never trains: cache all of it
    if config.trainable_stages == -1 or config.trainable_stages >= num_stages:
        return 0
    return num_stages - config.trainable_stages


def cache_stage(config: FaceTrainConfig, num_stages: int) -> int:
    """Where training starts from cached features (0: from pixels)."""
    prefix = frozen_prefix(config, num_stages)
    if config.cache_frozen_features == "off":
        return 0
    if config.cache_frozen_features == "on":
        if prefix == 0:
            raise CnnlabError("cache_frozen_features=on needs a backbone part that never trains "
                              "(trainable_stages below the number of stages, or freeze_epochs >= epochs)")
        if config.shift:
            raise CnnlabError("cache_frozen_features=on cannot apply a random shift to cached features; "
                              "use shift=0 or cache_frozen_features=off")
    if config.shift:
        return 0
    return prefix


def set_trainable(model: SiameseNet, config: FaceTrainConfig, epoch: int) -> None:
    """Backbone frozen for the first `freeze_epochs`, then its last `trainable_stages` train."""
    if epoch < config.freeze_epochs:
        model.freeze_backbone(True, 0)
    elif config.trainable_stages == -1:
        model.freeze_backbone(False)
    else:
        model.freeze_backbone(True, min(config.trainable_stages, len(model.backbone_stages())))


class PrefixFeatures:
    """Outputs of the frozen backbone stages [0, stage) for some rows of a dataset, and of
    their mirror images, as one device tensor `features[position, flipped]`; `gather` takes
    dataset row numbers. Computed once (no_grad, eval mode) and kept in the shared array cache
    under a key of the frozen weights, the stage and the images, so a later run (the demo after
    a benchmark, a tuning worker, a margin study) loads them instead of recomputing."""

    def __init__(self, features: torch.Tensor, rows: np.ndarray, num_rows: int, stage: int):
        self.features, self.stage = features, stage
        position = torch.full((num_rows,), -1, dtype=torch.int64)
        position[torch.from_numpy(np.asarray(rows, dtype=np.int64))] = torch.arange(len(rows))
        self.position = position.to(features.device)

    @staticmethod
    @torch.no_grad()
    def compute(model: SiameseNet, images: np.ndarray, rows: np.ndarray, stage: int, *,
                batch_size: int = 256, progress: bool | None = None) -> torch.Tensor:
        from cnnlab.progress import progress_bar
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        chunks = []
        try:
            for s in progress_bar(range(0, len(rows), batch_size), enable=progress,
                                  desc="cache frozen features", unit="batch"):
                x = torch.from_numpy(images[rows[s:s + batch_size]]).to(device).permute(0, 3, 1, 2)
                x = model.prepare_input(x.contiguous(memory_format=torch.channels_last))
                chunks.append(torch.stack([run_stages(model, v, 0, stage) for v in (x, x.flip(3))], dim=1)
                              .contiguous())
        finally:
            model.train(was_training)
        return torch.cat(chunks)

    def __len__(self) -> int:
        return len(self.features)

    def gather(self, rows: torch.Tensor, flipped: torch.Tensor | None = None) -> torch.Tensor:
        pos = self.position[rows]
        if bool((pos < 0).any()):
            raise ValueError("asked for features of rows that were not cached")
        return self.features[pos, 0 if flipped is None else flipped.long()]


def prefix_key(model: SiameseNet, stage: int, dataset: FaceDataset, rows: np.ndarray) -> str:
    """Identifies cached features: the frozen weights themselves (a random init differs by
    seed), the stage, the images and which of them."""
    h = hashlib.sha256(f"{stage}|{dataset.root}|{dataset.spec.cache_spec()}|{len(dataset)}|"
                       f"{next(model.parameters()).device}".encode())
    for p in dataset.paths:
        h.update(p.encode())
    h.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    for name, tensor in model.backbone.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


# In-process memo of one cached prefix: tuning trials and margin runs with the same frozen
# weights and people reuse it instead of recomputing minutes of forward passes.
_PREFIX_MEMO: dict[str, PrefixFeatures] = {}


def cached_prefix(model: SiameseNet, dataset: FaceDataset, rows: np.ndarray, stage: int, *, batch_size: int,
                  progress: bool | None, log: Callable[[str], None]) -> PrefixFeatures:
    from cnnlab.data.cache import ArrayCache
    rows = np.asarray(rows, dtype=np.int64)
    key = prefix_key(model, stage, dataset, rows)
    if key not in _PREFIX_MEMO:
        _PREFIX_MEMO.clear()  # one entry: free the old tensor before building the new one
        device = next(model.parameters()).device
        start = time.perf_counter()
        cache = ArrayCache()
        arrays = cache.load_or_build("faces-prefix", key, lambda: {"features": PrefixFeatures.compute(
            model, dataset.images, rows, stage, batch_size=batch_size, progress=progress).cpu().numpy()})
        features = torch.from_numpy(arrays["features"]).to(device)
        _PREFIX_MEMO[key] = PrefixFeatures(features, rows, len(dataset), stage)
        log(f"{'loaded cached' if cache.last_hit else 'computed'} frozen stages 0-{stage - 1} for {len(rows)} "
            f"images x 2 flips ({tuple(features.shape[2:])}, {features.numel() * 4 / 2**20:.0f} MiB) "
            f"in {time.perf_counter() - start:.0f} s")
    return _PREFIX_MEMO[key]


# ---------------------------------------------------------------------------- the task
class _EpochBatches:
    """One epoch of P x K batches: (inputs on the device, labels), gathered lazily."""

    def __init__(self, task: "FaceVerificationTask", epoch: int):
        self.task, self.epoch = task, epoch
        self.index_batches = task.sampler.batches(epoch)

    def __len__(self) -> int:
        return len(self.index_batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        t = self.task
        generator = torch.Generator(device=t.device).manual_seed(t.config.seed * 1000 + self.epoch)
        t.pair_generator = generator
        for local in self.index_batches:
            rows = t.train_rows[local.to(t.device)]
            labels = t.train_labels[local.to(t.device)]
            if t.prefix is not None:
                flipped = (torch.rand(len(rows), generator=generator, device=t.device) < 0.5) if t.config.flip else None
                x = t.prefix.gather(rows, flipped)
            else:
                x = t.pixels[rows]
                if t.config.flip:
                    x = random_flip(x, generator)
                if t.config.shift:
                    x = random_crop(x, t.config.shift, generator)
            yield x, labels


class FaceVerificationTask:
    """Contrastive training on P x K batches; validation = AUC (and best accuracy) on seeded
    pairs among the validation people. `report(epoch, val_auc)` is called after each epoch
    (optuna pruning hooks in there), and the best epoch's weights are kept when asked."""

    def __init__(self, config: FaceTrainConfig, dataset: FaceDataset, fit_rows: np.ndarray, val_rows: np.ndarray,
                 device: torch.device, *, prefix: PrefixFeatures | None, start_stage: int,
                 report: Callable[[int, float], None] | None = None, log: Callable[[str], None] | None = None):
        self.config, self.device, self.prefix, self.start_stage = config, device, prefix, start_stage
        self.report, self.log = report, log
        self.started = time.perf_counter()
        self.loss = ContrastiveLoss(config.margin, create_distance(config.distance))
        self.distance = create_distance(config.distance)
        fit_labels = dataset.labels[fit_rows]
        self.sampler = PKSampler(fit_labels, config.people_per_batch, config.k, seed=config.seed)
        self.train_rows = torch.as_tensor(fit_rows, device=device)
        self.train_labels = torch.as_tensor(fit_labels, device=device)
        self.pixels = None
        if prefix is None:
            # uint8 NCHW (channels_last in memory) on the device; the model scales and normalises.
            self.pixels = torch.from_numpy(dataset.images).to(device).permute(0, 3, 1, 2)
        vi, vj, vsame = sample_pairs(dataset.labels[val_rows], config.val_pairs, seed=config.seed)
        self.val_rows = torch.as_tensor(val_rows, device=device)
        self.val_i, self.val_j = torch.as_tensor(vi, device=device), torch.as_tensor(vj, device=device)
        self.val_same = vsame
        self.pair_generator = torch.Generator(device=device).manual_seed(config.seed)
        self.epoch = 0
        self.best_auc = -math.inf
        self.best_epoch = 0
        self.best_state: dict | None = None

    # hooks the engine calls
    def on_epoch_start(self, model: SiameseNet, epoch: int) -> None:
        self.epoch = epoch
        set_trainable(model, self.config, epoch)

    def param_groups(self, model: SiameseNet) -> list[dict]:
        """Head at lr, trainable backbone stages at lr * backbone_lr_scale; no weight decay on
        biases and norm scales. Stages that never train are left out of the optimizer."""
        stages = model.backbone_stages()
        never = frozen_prefix(self.config, len(stages))
        backbone = [p for s in stages[never:] for p in s.parameters()]
        groups = []
        for params, scale in ((backbone, self.config.backbone_lr_scale), (list(model.head.parameters()), 1.0)):
            groups.append({"params": [p for p in params if p.ndim > 1], "lr_scale": scale})
            groups.append({"params": [p for p in params if p.ndim <= 1], "lr_scale": scale, "weight_decay": 0.0})
        return groups

    def train_batches(self, epoch: int) -> _EpochBatches:
        return _EpochBatches(self, epoch)

    def embed(self, model: SiameseNet, x: torch.Tensor) -> torch.Tensor:
        return embed_from_stage(model, x, self.start_stage)

    def training_step(self, model: SiameseNet, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, labels = batch
        z = self.embed(model, x).float()
        i, j, same = batch_pairs(labels, balance=self.config.balance_pairs, generator=self.pair_generator)
        per_pair = self.loss.per_pair(z[i], z[j], same)
        with torch.no_grad():
            d = self.distance.paired(z[i], z[j])
            pos = same.float()
            metrics = {"pos_dist": (d * pos).sum() / pos.sum().clamp(min=1),
                       "neg_dist": (d * (1 - pos)).sum() / (1 - pos).sum().clamp(min=1)}
        return per_pair.mean(), metrics

    def val_embeddings(self, model: SiameseNet) -> torch.Tensor:
        out = []
        for s in range(0, len(self.val_rows), self.config.eval_batch_size):
            rows = self.val_rows[s:s + self.config.eval_batch_size]
            x = self.prefix.gather(rows) if self.prefix is not None else self.pixels[rows]
            out.append(self.embed(model, x).float())
        return torch.cat(out)

    def evaluate(self, model: SiameseNet) -> dict[str, float]:
        z = self.val_embeddings(model)
        d = self.distance.paired(z[self.val_i], z[self.val_j]).cpu().numpy()
        rep = evaluate(d, self.val_same)
        if self.config.select_best and rep.auc > self.best_auc:
            self.best_auc, self.best_epoch = rep.auc, self.epoch + 1
            self.best_state = copy.deepcopy(model.state_dict())
        if self.log is not None:
            self.log(f"epoch {self.epoch + 1}/{self.config.epochs}: val AUC {rep.auc:.4f}, val accuracy "
                     f"{rep.accuracy:.2%} ({time.perf_counter() - self.started:.0f} s)")
        if self.report is not None:
            self.report(self.epoch, rep.auc)
        return {"auc": rep.auc, "acc": rep.accuracy, "eer": rep.eer}


# ---------------------------------------------------------------------------- embedding helpers
@torch.no_grad()
def embed_images(model: SiameseNet, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Embeddings (float32 N x D) of uint8 N x H x W x 3 images, eval mode, from pixels."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = [model.embed(torch.from_numpy(images[s:s + batch_size]).to(device).permute(0, 3, 1, 2)).float().cpu()
               for s in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, model.embedding_dim), np.float32)


def pair_distances(embeddings: np.ndarray, i: np.ndarray, j: np.ndarray, distance: str) -> np.ndarray:
    dist = create_distance(distance)
    z = torch.from_numpy(np.asarray(embeddings, dtype=np.float32))
    return dist.paired(z[torch.as_tensor(i)], z[torch.as_tensor(j)]).numpy().astype(np.float64)


# ---------------------------------------------------------------------------- one training
@dataclass
class TrainedVerifier:
    model: SiameseNet
    threshold: float                 # calibrated on the validation pairs
    validation: VerificationReport   # at that threshold (the best one on those pairs)
    history: list[dict]
    best_epoch: int
    train_time_s: float
    cache_time_s: float
    start_stage: int


def train_verifier(config: FaceTrainConfig, dataset: FaceDataset, fit_people: Sequence[str],
                   val_people: Sequence[str], run_dir: str | Path, *, report=None,
                   log: Callable[[str], None] = print, data_info: dict | None = None) -> TrainedVerifier:
    """Train on `fit_people`, select the epoch and calibrate the threshold on pairs sampled
    among `val_people` (disjoint from them). Writes the engine's run files into `run_dir`."""
    overlap = set(fit_people) & set(val_people)
    if overlap:
        raise CnnlabError(f"{len(overlap)} people are in both the training and validation split, e.g. {sorted(overlap)[:3]}")
    engine = Engine(config.train_config(), run_dir, run_config={
        "faces": to_plain(config), "data": {**(data_info or {}), "fit_people": len(fit_people),
                                            "val_people": len(val_people)}})
    seed_everything(config.seed)
    model = engine.prepare(SiameseNet.from_config(config.model_config()))
    num_stages = len(model.backbone_stages())
    if config.trainable_stages > num_stages:
        raise CnnlabError(f"trainable_stages={config.trainable_stages} but {config.backbone} has {num_stages} stages")
    set_trainable(model, config, 0)
    fit_rows = dataset.indices_of_people(fit_people)
    val_rows = dataset.indices_of_people(val_people)
    stage = cache_stage(config, num_stages)
    prefix, cache_time = None, 0.0
    if stage > 0:
        start = time.perf_counter()
        # Only rows a P x K batch can draw (people with >= 2 images) and the validation rows.
        fit_counts = np.bincount(dataset.labels[fit_rows], minlength=dataset.num_people)
        drawable = fit_rows[fit_counts[dataset.labels[fit_rows]] >= 2]
        prefix = cached_prefix(model, dataset, np.concatenate([drawable, val_rows]), stage,
                               batch_size=config.eval_batch_size, progress=config.progress, log=log)
        cache_time = time.perf_counter() - start
    task = FaceVerificationTask(config, dataset, fit_rows, val_rows, engine.device, prefix=prefix,
                                start_stage=stage, report=report, log=log)
    log(f"training on {len(fit_rows)} images of {len(fit_people)} people "
        f"({len(task.sampler)} batches of {config.people_per_batch}x{config.k} per epoch, "
        f"{'from cached stage ' + str(stage) + ' features' if stage else 'from pixels'}); "
        f"validating on {len(task.val_same)} pairs of {len(val_people)} people")
    task.started = time.perf_counter()
    result = engine.fit(model, task)
    best_epoch = len(result.history)
    if config.select_best and task.best_state is not None:
        model.load_state_dict(task.best_state)
        best_epoch = task.best_epoch
    model.eval()
    # The threshold comes from the validation people only; the test pairs never choose it.
    val_embeddings = embed_images(model, dataset.images[val_rows], batch_size=config.eval_batch_size)
    vd = pair_distances(val_embeddings, task.val_i.cpu().numpy(), task.val_j.cpu().numpy(), config.distance)
    threshold, _ = best_threshold(vd, task.val_same)
    validation = evaluate(vd, task.val_same, threshold=threshold)
    log(f"kept epoch {best_epoch} (val AUC {validation.auc:.4f}); threshold {threshold:.4f} calibrated on "
        f"{len(vd)} validation pairs (accuracy {validation.accuracy:.2%} there)")
    return TrainedVerifier(model, threshold, validation, result.history, best_epoch,
                           float(result.final["train_time_s"]), cache_time, stage)


# ---------------------------------------------------------------------------- LFW runs
def default_lfw_root() -> Path:
    import os
    return Path(os.environ.get("CNNLAB_DATA", "../shared/data")) / "lfw"


def load_lfw_images(protocol, config: FaceTrainConfig, log: Callable[[str], None] = print) -> FaceDataset:
    """Every LFW image, decoded once into the shared uint8 cache (one entry serves View 1,
    View 2 and tuning alike); splits then select people from it."""
    start = time.perf_counter()
    dataset, report = load_identity_folders(protocol.image_root, config.preprocess(), progress=config.progress)
    log(f"{dataset.summary(report)} ({time.perf_counter() - start:.0f} s)")
    for path, reason in report.bad[:5]:
        log(f"  skipped {path}: {reason}")
    return dataset


def _extra(config: FaceTrainConfig, trained: TrainedVerifier, **more) -> dict:
    return {"threshold": trained.threshold, "distance": config.distance, "margin": config.margin,
            "crop": config.crop, "input_size": config.input_size, "val_auc": trained.validation.auc,
            "val_accuracy": trained.validation.accuracy, **more}


def test_report(distances: np.ndarray, same: np.ndarray, threshold: float) -> dict:
    """Test metrics at the calibrated threshold, plus the best-threshold accuracy (an upper
    bound that peeks at the test labels, reported apart and named so)."""
    calibrated = evaluate(distances, same, threshold=threshold)
    best_t, best_acc = best_threshold(distances, same)
    return {**calibrated.to_dict(), "best_threshold": best_t, "best_threshold_accuracy": best_acc}


def train_view1(config: FaceTrainConfig, data_root: str | Path, out_dir: str | Path, *,
                evaluate_test: bool, report: Callable[[int, float], None] | None = None,
                plots: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train on View 1's DevTrain people minus a seeded validation split; select and calibrate
    on validation pairs. Only with `evaluate_test` are the 1,000 DevTest pairs read and scored
    (once, at the calibrated threshold). Writes metrics.json, model.pt and the engine's files
    to `out_dir` (plus the test embeddings and plots when testing). Returns the metrics."""
    from cnnlab.data.lfw import LFWProtocol

    out_dir = Path(out_dir)
    protocol = LFWProtocol(data_root)
    # Only the DevTrain people file is read here: the test pairs stay unread until scoring.
    fit_people, val_people = protocol.validation_people(config.val_fraction, config.seed)
    dataset = load_lfw_images(protocol, config, log)
    known = set(dataset.people)
    fit_people = [p for p in fit_people if p in known]
    val_people = [p for p in val_people if p in known]
    trained = train_verifier(config, dataset, fit_people, val_people, out_dir, report=report, log=log,
                             data_info={"protocol": "view1", "root": str(protocol.root)})
    metrics = {"protocol": "view1", "validation": trained.validation.to_dict(), "threshold": trained.threshold,
               "best_epoch": trained.best_epoch, "epochs": config.epochs, "train_time_s": trained.train_time_s,
               "feature_cache_time_s": trained.cache_time_s, "trained_from_stage": trained.start_stage,
               "fit_people": len(fit_people), "val_people": len(val_people),
               "fit_images": int(len(dataset.indices_of_people(fit_people))), "test": None}
    if evaluate_test:
        split = protocol.view1()
        test_rows = dataset.indices_of_people(split.test_people)
        test = dataset.subset(split.test_people)
        start = time.perf_counter()
        embeddings = embed_images(trained.model, test.images, batch_size=config.eval_batch_size)
        i, j, same = test.pair_indices(split.test_pairs)
        d = pair_distances(embeddings, i, j, config.distance)
        metrics["test"] = test_report(d, same, trained.threshold)
        metrics["test_embed_time_s"] = time.perf_counter() - start
        metrics["test_images"] = int(len(test_rows))
        save_test_outputs(out_dir, embeddings, test, d, same, trained.threshold)
        log(format_test(metrics["test"], "DevTest"))
    save_model(trained.model, out_dir / MODEL_FILE, extra=_extra(config, trained))
    write_json(out_dir / METRICS_FILE, metrics)
    save_yaml(config, out_dir / "faces_config.yaml")
    if evaluate_test and plots:
        from cnnlab.plots.faces import plot_run
        metrics["plots"] = [str(p) for p in plot_run(out_dir)]
        write_json(out_dir / METRICS_FILE, metrics)
    return metrics


@torch.no_grad()
def backbone_features(model: SiameseNet, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """L2-normalised pooled backbone features (no head): what the ImageNet network alone sees."""
    device = next(model.parameters()).device
    model.eval()
    out = [F.normalize(model.forward_features(torch.from_numpy(images[s:s + batch_size]).to(device)
                                              .permute(0, 3, 1, 2)).float(), dim=1).cpu()
           for s in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


def untrained_baseline(config: FaceTrainConfig, data_root: str | Path, out_dir: str | Path | None = None, *,
                       log: Callable[[str], None] = print) -> dict:
    """The reference point a trained model must beat: the backbone with its pretrained
    weights and no fine-tuning, Euclidean distance between L2-normalised pooled features,
    threshold calibrated on the same validation people as `train_view1`, DevTest scored once."""
    from cnnlab.data.lfw import LFWProtocol
    from cnnlab.env import resolve_device

    protocol = LFWProtocol(data_root)
    fit_people, val_people = protocol.validation_people(config.val_fraction, config.seed)
    dataset = load_lfw_images(protocol, config, log)
    seed_everything(config.seed)
    model = SiameseNet.from_config(config.model_config()).to(resolve_device(config.device))
    val = dataset.subset([p for p in val_people if p in set(dataset.people)])
    vi, vj, vsame = sample_pairs(val.labels, config.val_pairs, seed=config.seed)
    vd = pair_distances(backbone_features(model, val.images, batch_size=config.eval_batch_size), vi, vj, "euclidean")
    threshold, _ = best_threshold(vd, vsame)
    split = protocol.view1()
    test = dataset.subset(split.test_people)
    i, j, same = test.pair_indices(split.test_pairs)
    d = pair_distances(backbone_features(model, test.images, batch_size=config.eval_batch_size), i, j, "euclidean")
    result = {"protocol": "view1", "model": f"{config.backbone} ({config.weights} weights), no fine-tuning",
              "input_size": config.input_size, "crop": config.crop,
              "validation": evaluate(vd, vsame, threshold=threshold).to_dict(), "test": test_report(d, same, threshold)}
    log(format_test(result["test"], "untrained DevTest"))
    if out_dir is not None:
        write_json(Path(out_dir) / "baseline.json", result)
    return result


def save_test_outputs(out_dir: Path, embeddings: np.ndarray, test: FaceDataset, d: np.ndarray,
                      same: np.ndarray, threshold: float) -> None:
    """What the plots and the margin comparison read: test embeddings with who they are,
    and the DevTest pair distances."""
    from cnnlab.io import save_npz_atomic
    save_npz_atomic(out_dir / TEST_EMBEDDINGS, {
        "embeddings": embeddings.astype(np.float32), "labels": test.labels,
        "people": np.array(test.people, dtype=str), "paths": np.array(test.paths, dtype=str),
        "root": np.array(str(test.root))})
    save_npz_atomic(out_dir / TEST_PAIRS, {"distances": d, "same": same, "threshold": np.array(threshold)})


def format_test(test: dict, name: str) -> str:
    far = ", ".join(f"TAR@FAR={k} {v:.2%}" for k, v in test["tar_at_far"].items())
    return (f"{name}: accuracy {test['accuracy']:.2%} at the calibrated threshold {test['threshold']:.3f} "
            f"(best-threshold accuracy {test['best_threshold_accuracy']:.2%}), AUC {test['auc']:.4f}, "
            f"EER {test['eer']:.2%}, {far}")


def train_view2(config: FaceTrainConfig, data_root: str | Path, out_dir: str | Path, *,
                folds: Sequence[int] | None = None, log: Callable[[str], None] = print) -> dict:
    """LFW View 2: for each fold, train on the other nine folds' people (a seeded validation
    split of them selects the epoch), then test on the fold's 600 pairs. As the protocol asks,
    the fold's threshold is chosen on the other nine folds' pairs (embedded by that fold's
    model), never on its own; accuracy at the validation-calibrated threshold is also given.
    Reports mean and standard deviation over the folds that ran."""
    from cnnlab.data.lfw import LFWProtocol, split_people

    out_dir = Path(out_dir)
    protocol = LFWProtocol(data_root)
    dataset = load_lfw_images(protocol, config, log)
    all_pairs = protocol.view2_pairs
    folds = list(range(protocol.num_folds)) if folds is None else list(folds)
    rows = []
    for fold in folds:
        split = protocol.view2_fold(fold)
        counts = [protocol.view2_people[f][n] for f in range(protocol.num_folds) if f != fold
                  for n in protocol.view2_people[f]]
        fit_people, val_people = split_people(list(split.train_people), counts, config.val_fraction, config.seed)
        log(f"[fold {fold + 1}/{protocol.num_folds}]")
        trained = train_verifier(config, dataset, fit_people, val_people, out_dir / f"fold-{fold + 1:02d}",
                                 log=log, data_info={"protocol": "view2", "fold": fold, "root": str(protocol.root)})
        i, j, same = dataset.pair_indices(all_pairs)
        used = np.unique(np.concatenate([i, j]))
        z = np.zeros((len(dataset), config.embedding_dim), np.float32)
        z[used] = embed_images(trained.model, dataset.images[used], batch_size=config.eval_batch_size)
        d = pair_distances(z, i, j, config.distance)
        pair_fold = np.array([p.fold for p in all_pairs])
        held = pair_fold == fold
        nine_fold_threshold, _ = best_threshold(d[~held], same[~held])
        test = test_report(d[held], same[held], nine_fold_threshold)
        row = {"fold": fold + 1, "accuracy": test["accuracy"], "threshold": nine_fold_threshold,
               "accuracy_val_threshold": evaluate(d[held], same[held], threshold=trained.threshold).accuracy,
               "val_threshold": trained.threshold, "auc": test["auc"], "eer": test["eer"],
               "tar_at_far": test["tar_at_far"], "val_auc": trained.validation.auc,
               "best_epoch": trained.best_epoch, "train_time_s": trained.train_time_s}
        rows.append(row)
        save_model(trained.model, out_dir / f"fold-{fold + 1:02d}" / MODEL_FILE,
                   extra=_extra(config, trained, fold=fold + 1))
        log(f"fold {fold + 1}: accuracy {row['accuracy']:.2%} (threshold from the other folds), AUC {row['auc']:.4f}")
        write_json(out_dir / METRICS_FILE, view2_summary(rows, protocol.num_folds))
    save_yaml(config, out_dir / "faces_config.yaml")
    summary = view2_summary(rows, protocol.num_folds)
    write_json(out_dir / METRICS_FILE, summary)
    return summary


def view2_summary(rows: list[dict], num_folds: int) -> dict:
    def stats(key):
        v = np.array([r[key] for r in rows], dtype=np.float64)
        return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    return {"protocol": "view2", "folds_run": len(rows), "num_folds": num_folds, "folds": rows,
            "accuracy": stats("accuracy"), "accuracy_val_threshold": stats("accuracy_val_threshold"),
            "auc": stats("auc"), "eer": stats("eer"), "complete": len(rows) == num_folds}


# ---------------------------------------------------------------------------- margin study
def outlier_counts(distances: np.ndarray, same: np.ndarray, threshold: float, embeddings: np.ndarray,
                   labels: np.ndarray, distance: str) -> dict:
    """Same-person pairs beyond the threshold, different-person pairs within it, and queries
    (images whose person has another image) whose nearest other image is another person."""
    dist = create_distance(distance)
    z = torch.from_numpy(np.asarray(embeddings, np.float32))
    with torch.no_grad():
        dm = dist.pairwise(z, z)
        dm.fill_diagonal_(math.inf)
        nearest = dm.argmin(1).numpy()
    counts = np.bincount(labels)
    queries = counts[labels] >= 2
    wrong_nn = queries & (labels[nearest] != labels)
    return {"same_beyond_threshold": int((same & (distances > threshold)).sum()),
            "different_within_threshold": int((~same & (distances <= threshold)).sum()),
            "nn_queries": int(queries.sum()), "nn_other_person": int(wrong_nn.sum()),
            "nn_error_rate": float(wrong_nn.sum() / max(queries.sum(), 1))}


def compare_margins(config: FaceTrainConfig, margins: Sequence[float], data_root: str | Path,
                    out_dir: str | Path, *, log: Callable[[str], None] = print) -> dict:
    """One View 1 model per margin, everything else equal; the comparison (metrics, outlier
    counts, side-by-side figures) goes to OUT/comparison.{json,md} and OUT/*.png."""
    out_dir = Path(out_dir)
    if len(margins) < 1:
        raise CnnlabError("give at least one margin")
    runs = []
    for m in margins:
        run_config = replace(config, margin=float(m))
        run_dir = out_dir / f"margin-{float(m):g}"
        log(f"[margin {m:g}]")
        metrics = train_view1(run_config, data_root, run_dir, evaluate_test=True, log=log)
        with np.load(run_dir / TEST_EMBEDDINGS) as e, np.load(run_dir / TEST_PAIRS) as p:
            outliers = outlier_counts(p["distances"], p["same"], float(p["threshold"]), e["embeddings"],
                                      e["labels"], config.distance)
        runs.append({"margin": float(m), "run_dir": str(run_dir), "test": metrics["test"],
                     "validation": metrics["validation"], "outliers": outliers,
                     "train_time_s": metrics["train_time_s"]})
    comparison = {"margins": [float(m) for m in margins], "config": to_plain(config), "runs": runs}
    from cnnlab.plots.faces import plot_margin_comparison
    comparison["figures"] = [str(p) for p in plot_margin_comparison([Path(r["run_dir"]) for r in runs],
                                                                    [f"margin {r['margin']:g}" for r in runs],
                                                                    out_dir)]
    write_json(out_dir / "comparison.json", comparison)
    from cnnlab.io import atomic_write_text
    atomic_write_text(out_dir / "comparison.md", margins_markdown(comparison))
    return comparison


def margins_markdown(comparison: dict) -> str:
    lines = ["| margin | DevTest acc (calibrated) | best-threshold acc | AUC | EER | TAR@FAR=0.01 | threshold | "
             "same beyond threshold | different within | NN is another person | train time (s) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in comparison["runs"]:
        t, o = r["test"], r["outliers"]
        lines.append(f"| {r['margin']:g} | {t['accuracy']:.2%} | {t['best_threshold_accuracy']:.2%} | {t['auc']:.4f} | "
                     f"{t['eer']:.2%} | {t['tar_at_far'].get('0.01', float('nan')):.2%} | {t['threshold']:.3f} | "
                     f"{o['same_beyond_threshold']} | {o['different_within_threshold']} | "
                     f"{o['nn_other_person']} / {o['nn_queries']} | {r['train_time_s']:.0f} |")
    figures = "\n".join(f"![{Path(f).stem}]({Path(f).name})" for f in comparison.get("figures", []))
    return ("# Contrastive margin comparison (LFW View 1 DevTest)\n\n" + "\n".join(lines)
            + "\n\nEverything but the margin is the same; thresholds are calibrated on validation people. "
              "Outliers: same-person DevTest pairs beyond the threshold, different-person pairs within it, "
              "and test images whose nearest other test image is another person.\n\n" + figures + "\n")
