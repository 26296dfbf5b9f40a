"""Siamese face verification as an engine task: the contrastive loss of Hadsell, Chopra and
LeCun (2006) on pairs formed inside P x K batches (Hermans, Beyer and Leibe 2017), from pixels
or from cached frozen-stage features (`cnnlab.tasks.faces.features`); validation is the AUC
of seeded pairs among people the model never trains on: LFW's validation people, and beside
them, when the run has one, a second set that is not LFW (`extra_val`, `cnnlab.tasks.faces.extra`).

Under torchrun each rank embeds its share of every P x K batch; the embeddings of the whole
batch are then gathered on every rank (`cnnlab.training.distributed.gather_rows`), so the pairs, the
negatives and the loss are those of one process training on the whole batch."""
from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

from cnnlab.data.faces import FaceDataset
from cnnlab.data.loader import random_crop, random_flip, shard_sizes, shard_slice
from cnnlab.data.pairs import sample_pairs
from cnnlab.data.samplers import PKSampler
from cnnlab.metric_learning.distances import create_distance
from cnnlab.metric_learning.losses import ContrastiveLoss, MarginSoftmaxLoss
from cnnlab.metric_learning.miners import create_miner
from cnnlab.metrics.retrieval import retrieval_scores
from cnnlab.metrics.verification import evaluate
from cnnlab.models.siamese import SiameseNet
from cnnlab.models.utils import eval_mode, in_batches
from cnnlab.tasks.faces.config import FaceTrainConfig, frozen_prefix, set_trainable
from cnnlab.tasks.faces.features import PrefixFeatures, embed_from_prefix
from cnnlab.training.distributed import DistContext, gather_rows
from cnnlab.training.task import Task


class FaceBatch(NamedTuple):
    """One training batch: network inputs, person labels, and the generator that draws this
    epoch's random choices (flips, shifts, then the negatives of `batch_pairs`), so the pairs
    a step forms depend on the epoch and the step only. Under torchrun `inputs` are this
    rank's share of the batch, `labels` those of the whole batch, and `shares` how many
    images each rank holds."""
    inputs: torch.Tensor
    labels: torch.Tensor
    pair_generator: torch.Generator
    shares: tuple[int, ...] = ()


class ValidationPairs(NamedTuple):
    """Seeded pairs among some validation rows: `i`, `j` index `rows`; `same` says which match;
    `labels` are the rows' people (for retrieval over all of them)."""
    rows: torch.Tensor
    i: torch.Tensor
    j: torch.Tensor
    same: np.ndarray
    labels: np.ndarray

    @classmethod
    def sample(cls, labels: np.ndarray, rows: np.ndarray, n: int, seed: int, device: torch.device
               ) -> ValidationPairs:
        i, j, same = sample_pairs(labels[rows], n, seed=seed)
        return cls(*(torch.as_tensor(a, device=device) for a in (rows, i, j)), same, labels[rows])


class EmbedFrom(nn.Module):
    """The face model's training pass, `embed_from(stage, x)`, as a module's forward: DDP
    synchronises the gradients of what runs through its wrapper's forward call."""

    def __init__(self, model: SiameseNet, stage: int):
        super().__init__()
        self.model, self.stage = model, stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed_from(self.stage, x)


class _EpochBatches:
    """One epoch of P x K batches, gathered lazily on the task's device."""

    def __init__(self, task: FaceVerificationTask, epoch: int):
        self.task, self.epoch = task, epoch
        self.index_batches = task.sampler.batches(epoch)

    def __len__(self) -> int:
        return len(self.index_batches)

    def __iter__(self) -> Iterator[FaceBatch]:
        t = self.task
        generator = torch.Generator(device=t.device).manual_seed(t.config.seed * 1000 + self.epoch)
        rank, world_size = t.dist.rank, t.dist.world_size
        for local in self.index_batches:
            local = local.to(t.device)
            rows, labels = t.train_rows[local], t.train_labels[local]
            # Every rank draws the flips and shifts of the whole batch from the same generator,
            # then keeps its share of the images: one process would have drawn the same.
            mine = shard_slice(len(rows), rank, world_size)
            shares = shard_sizes(len(rows), world_size)
            if t.prefix is not None:
                flipped = (torch.rand(len(rows), generator=generator, device=t.device) < 0.5) if t.config.flip else None
                # One of the 1 + K cached versions per image, uniformly: each is as good a photo
                # of the face as the next, and K alone sets the augmented share, K / (1 + K).
                # Drawn after the flips and only with views: without them the generator's stream
                # (the flips, then the pairs) is the flips' alone.
                view, views = None, t.prefix.num_views
                if views:
                    view = torch.randint(0, 1 + views, (len(rows),), generator=generator, device=t.device)[mine]
                x = t.prefix.gather(rows[mine], None if flipped is None else flipped[mine], view)
            else:
                x = t.pixels[rows]
                if t.config.flip:
                    x = random_flip(x, generator)
                if t.config.shift:
                    x = random_crop(x, t.config.shift, generator)
                x = x[mine]
            yield FaceBatch(x, labels, generator, shares)


class FaceVerificationTask(Task):
    """Contrastive (or CosFace/ArcFace, `config.loss`) training on P x K batches; validation =
    AUC (and best accuracy) on seeded pairs among the validation people, and with
    `extra_val_rows` the same on a second set (`extra_auc`, ..., and `mean_auc`, the two AUCs'
    mean); retrieval precision@1 over all the images of each set's people (`p1`, `extra_p1`),
    which pair AUC does not measure and which nothing selects on. Which epoch is kept (the best
    validation AUC, `FaceTrainConfig.select_on`), the log line and optuna's pruning are the
    engine's selection and callbacks (`train_verifier`)."""

    def __init__(self, config: FaceTrainConfig, dataset: FaceDataset, fit_rows: np.ndarray, val_rows: np.ndarray,
                 device: torch.device, *, prefix: PrefixFeatures | None, start_stage: int,
                 dist: DistContext | None = None, extra_val_rows: np.ndarray | None = None):
        self.config, self.device, self.prefix, self.start_stage = config, device, prefix, start_stage
        if prefix is not None and prefix.num_views != config.augment_views:
            raise ValueError(f"augment_views={config.augment_views} but the cached features hold "
                             f"{prefix.num_views} augmented views")
        self.dist = dist or DistContext()  # the engine's: which share of each batch this rank embeds
        self.distance = create_distance(config.distance)  # validation measures what training optimises
        fit_labels = dataset.labels[fit_rows]
        # contrastive: a loss over the pairs a miner picks; cosface/arcface: each person a batch
        # can draw is a class (single-image people too with singles_per_batch), and the loss
        # learns one vector per class.
        self.loss = self.miner = self.classes = None
        if config.loss == "contrastive":
            self.loss = ContrastiveLoss(config.margin, self.distance)
            self.miner = create_miner(config.miner, **config.miner_options(self.distance))
        else:
            counts = np.bincount(fit_labels, minlength=dataset.num_people)
            people = np.flatnonzero(counts >= config.min_images_drawn)
            class_of = np.full(dataset.num_people, -1, dtype=np.int64)
            class_of[people] = np.arange(len(people))
            self.class_of = torch.as_tensor(class_of, device=device)
            self.classes = MarginSoftmaxLoss(config.loss, len(people), config.embedding_dim,
                                             None if config.class_margin == -1 else config.class_margin,
                                             config.class_scale, config.class_subcenters)
        self.sampler = PKSampler(fit_labels, config.people_per_batch, config.k, seed=config.seed,
                                 singles=config.singles_per_batch)
        self.train_rows = torch.as_tensor(fit_rows, device=device)
        self.train_labels = torch.as_tensor(fit_labels, device=device)
        self.pixels = None
        if prefix is None:
            # uint8 NCHW (channels_last in memory) on the device; the model scales and normalises.
            self.pixels = torch.from_numpy(dataset.images).to(device).permute(0, 3, 1, 2)
        self.val = ValidationPairs.sample(dataset.labels, val_rows, config.val_pairs, config.seed, device)
        self.val_rows, self.val_i, self.val_j, self.val_same, _ = self.val
        self.extra_val = None  # sampled like LFW's validation pairs
        if extra_val_rows is not None and len(extra_val_rows):
            self.extra_val = ValidationPairs.sample(dataset.labels, np.asarray(extra_val_rows), config.val_pairs,
                                                    config.seed, device)
        self.epoch = 0

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
        if self.classes is not None:  # unit vectors once normalised: decay would only shrink them
            groups.append({"params": list(self.classes.parameters()), "lr_scale": 1.0, "weight_decay": 0.0})
        # Not timm's param_groups_weight_decay: it leaves out parameters that do not require
        # gradients, and the stages frozen for the first `freeze_epochs` are frozen when the
        # optimizer is built.
        for params, scale in ((backbone, self.config.backbone_lr_scale), (list(model.head.parameters()), 1.0)):
            groups.append({"params": [p for p in params if p.ndim > 1], "lr_scale": scale})
            groups.append({"params": [p for p in params if p.ndim <= 1], "lr_scale": scale, "weight_decay": 0.0})
        return groups

    @torch.no_grad()
    def imprint_classes(self, model: SiameseNet) -> None:
        """cosface/arcface with class_init=imprint: each class vector from its person's training
        images as the starting network embeds them (eval mode, as validation embeds)."""
        classes = self.class_of[self.train_labels]
        drawn = classes >= 0
        with eval_mode(model):
            z = self.embed_rows(model, self.train_rows[drawn])
        self.classes.imprint(z, classes[drawn])

    def loss_module(self) -> MarginSoftmaxLoss | None:
        return self.classes

    def train_batches(self, epoch: int) -> _EpochBatches:
        return _EpochBatches(self, epoch)

    def steps_per_epoch(self) -> int:
        return len(self.sampler)

    def training_module(self, model: SiameseNet) -> EmbedFrom:
        return EmbedFrom(model, self.start_stage)

    def embed(self, model: SiameseNet, x: torch.Tensor) -> torch.Tensor:
        return model.embed_from(self.start_stage, x)

    def training_step(self, model: EmbedFrom | SiameseNet, batch: FaceBatch
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`model`: what the engine trains, `training_module(...)` (in DDP under torchrun), or
        the SiameseNet itself when called directly."""
        x, labels, generator = batch.inputs, batch.labels, batch.pair_generator
        z = (self.embed(model, x) if isinstance(model, SiameseNet) else model(x)).float()
        z = gather_rows(z, batch.shares, self.dist)  # the whole batch's embeddings on every rank
        if self.classes is not None:
            # Every rank computes the same loss from the same gathered embeddings, so the class
            # weights get the same gradient everywhere without DDP.
            loss = self.classes(z, self.class_of[labels])
            with torch.no_grad():  # the distances of every pair of the batch, for the log
                d = self.distance.compute_mat(z, z)
                same = labels[:, None] == labels[None, :]
                off = ~torch.eye(len(z), dtype=torch.bool, device=z.device)
                return loss, {"pos_dist": d[same & off].mean(), "neg_dist": d[~same].mean()}
        i, j, same = self.miner(z, labels, generator)
        per_pair, d = self.loss.per_pair_and_distances(z[i], z[j], same)
        with torch.no_grad():
            d, pos = d.detach(), same.float()
            metrics = {"pos_dist": (d * pos).sum() / pos.sum().clamp(min=1),
                       "neg_dist": (d * (1 - pos)).sum() / (1 - pos).sum().clamp(min=1)}
        return per_pair.mean(), metrics

    def val_embeddings(self, model: SiameseNet) -> torch.Tensor:
        return self.embed_rows(model, self.val_rows)

    def embed_rows(self, model: SiameseNet, rows: torch.Tensor) -> torch.Tensor:
        if self.prefix is not None:
            return embed_from_prefix(model, self.prefix, rows, batch_size=self.config.eval_batch_size)
        return in_batches(lambda s: self.embed(model, self.pixels[rows[s]]).float(), len(rows),
                          self.config.eval_batch_size, empty=torch.zeros(0, model.embedding_dim))

    def distances_and_retrieval(self, model: SiameseNet, pairs: ValidationPairs) -> tuple[np.ndarray, dict]:
        """The pairs' distances, and leave-one-out retrieval over every image of their rows
        (`cnnlab.metrics.retrieval.retrieval_scores`) from the same embeddings."""
        z = self.embed_rows(model, pairs.rows)
        return (self.distance.paired(z[pairs.i], z[pairs.j]).cpu().numpy(),
                retrieval_scores(z.cpu(), pairs.labels, self.distance))

    def evaluate(self, model: SiameseNet) -> dict[str, float]:
        scores = {}
        for prefix, pairs in (("", self.val), ("extra_", self.extra_val)):
            if pairs is not None:
                distances, retrieval = self.distances_and_retrieval(model, pairs)
                rep = evaluate(distances, pairs.same)
                scores.update({f"{prefix}auc": rep.auc, f"{prefix}acc": rep.accuracy, f"{prefix}eer": rep.eer,
                               f"{prefix}p1": retrieval["precision_at_1"]})
        if self.extra_val is not None:
            scores["mean_auc"] = (scores["auc"] + scores["extra_auc"]) / 2
        return scores
