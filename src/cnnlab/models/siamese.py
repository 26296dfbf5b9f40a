"""A Siamese network for face verification (Bromley et al. 1993, "Signature Verification
using a Siamese Time Delay Neural Network"; trained with the contrastive loss of Hadsell,
Chopra and LeCun 2006, see `cnnlab.metric_learning.losses`).

One backbone, one projection head: the two "branches" are two calls of the same module,
so their weights are shared by construction, never copied or synchronised. `embed(images)`
is the public API; it takes RGB images in [0, 1] (float, or uint8 in [0, 255]) and applies
the backbone's own normalisation, so callers (training, verify, search, the ONNX file)
never have to know a backbone's mean and std.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import load_state_dict_checked, load_torch_file, save_torch_atomic
from cnnlab.core.registry import Registry
from cnnlab.metric_learning.distances import DISTANCES, Distance, EuclideanDistance
from cnnlab.metrics.retrieval import nearest_neighbours
from cnnlab.models.backbones import BACKBONES, DataConfig, create_backbone
from cnnlab.models.utils import eval_mode, module_device

HEADS = Registry("projection head")


@HEADS.register("linear")
def linear_head(in_features: int, embedding_dim: int, hidden_dim: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, embedding_dim))


@HEADS.register("mlp")
def mlp_head(in_features: int, embedding_dim: int, hidden_dim: int, dropout: float) -> nn.Module:
    # No BatchNorm: the head must give the same embedding for an image whatever else is in
    # the batch, and verify/search embed single images.
    return nn.Sequential(nn.Linear(in_features, hidden_dim), nn.ReLU(inplace=True),
                         nn.Dropout(dropout), nn.Linear(hidden_dim, embedding_dim))


@dataclass
class SiameseConfig:
    backbone: str = "tf_efficientnet_lite0"
    embedding_dim: int = 128
    weights: str = "imagenet"     # "imagenet" | "none" | path to a backbone state dict
    normalize: bool = True        # L2-normalise embeddings (distances then lie in [0, 2])
    head: str = "linear"
    hidden_dim: int = 512         # width of the "mlp" head
    dropout: float = 0.0
    input_size: int | None = None  # None: the backbone's ImageNet size
    # Test-time augmentation: in eval mode an image's embedding is the mean of its own and its
    # mirror image's (renormalised), so verify, search, the index and ONNX all include it.
    flip_tta: bool = False

    def __post_init__(self):
        self.backbone = BACKBONES.canonical(self.backbone)
        self.head = HEADS.canonical(self.head)
        self.weights = str(self.weights)
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {self.embedding_dim}")
        if self.hidden_dim < 1:
            raise ValueError(f"hidden_dim must be >= 1, got {self.hidden_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.input_size is not None and self.input_size < 32:
            raise ValueError(f"input_size must be >= 32, got {self.input_size}")

    def to_dict(self) -> dict:
        return asdict(self)


class SiameseNet(nn.Module):
    """`SiameseNet(SiameseConfig(...))`, or SiameseConfig's fields as keywords; a name as the
    first argument is the backbone (`SiameseNet("efficientnet_b0", weights="none")`). The
    defaults are SiameseConfig's, declared there only."""

    def __init__(self, config: SiameseConfig | str | None = None, **options):
        super().__init__()
        if "backbone_name" in options:  # the keyword saved configs of older models use
            options["backbone"] = options.pop("backbone_name")
        try:
            if isinstance(config, SiameseConfig):
                config = replace(config, **options)
            else:
                config = SiameseConfig(**({"backbone": config} if config is not None else {}), **options)
        except (KeyError, ValueError, TypeError) as exc:
            raise CnnlabError(f"invalid SiameseNet option: {exc.args[0]}") from None
        self.config = config
        self.backbone, backbone_data = create_backbone(config.backbone, config.weights)
        self._data_config = replace(backbone_data, input_size=config.input_size or backbone_data.input_size)
        self.head = HEADS.create(config.head, self.backbone.num_features, config.embedding_dim,
                                 config.hidden_dim, config.dropout)
        # Buffers, so they follow .to(device) and land in the ONNX graph.
        self.register_buffer("input_mean", torch.tensor(backbone_data.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(backbone_data.std).view(1, 3, 1, 1), persistent=False)
        self._frozen_modules: list[nn.Module] = []

    @classmethod
    def from_config(cls, config: SiameseConfig, **overrides) -> SiameseNet:
        """`from_config(cfg, weights="none")` rebuilds the architecture for loading a checkpoint."""
        return cls(config, **overrides)

    @property
    def data_config(self) -> DataConfig:
        """mean/std of the backbone and the input side this model is used at."""
        return self._data_config

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    def prepare_input(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected N x 3 x H x W RGB images, got shape {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        return (images - self.input_mean) / self.input_std

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features before the projection head (N x num_features): the untrained
        baseline and a t-SNE of what the backbone alone sees."""
        return self.backbone(self.prepare_input(images))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """N x embedding_dim embeddings, L2-normalised when `normalize` (with `flip_tta`, in
        eval mode, merged with the mirror image's: `merge_flips`)."""
        if self.config.flip_tta and not self.training:
            n = images.shape[0]
            z = self._project(self.forward_features(torch.cat([images, images.flip(3)])))
            return self.merge_flips(z[:n], z[n:])
        return self._project(self.forward_features(images))

    def merge_flips(self, z: torch.Tensor, z_mirror: torch.Tensor) -> torch.Tensor:
        """One embedding from an image's and its mirror image's: their mean, renormalised."""
        z = (z + z_mirror) / 2
        return F.normalize(z, dim=1) if self.config.normalize else z

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        z = self.head(pooled)
        return F.normalize(z, dim=1) if self.config.normalize else z

    # The staged forward pass: `embed_from(k, features_until(images, k)) == embed(images)`
    # for every k. Training from cached features splits the pass where the frozen prefix
    # ends, so the split must be the model's own computation, not a copy of it.
    def features_until(self, images: torch.Tensor, stage: int) -> torch.Tensor:
        """Output of backbone stages [0, stage) on RGB images (normalised here, as by `embed`)."""
        return self._run_stages(self.prepare_input(images), 0, stage)

    def embed_from(self, stage: int, features: torch.Tensor) -> torch.Tensor:
        """Embeddings from `features_until(images, stage)`: the remaining stages, pooling, head
        and normalisation. Stage 0 takes the images themselves (it is `embed`)."""
        if stage == 0:
            return self.embed(features)
        return self._project(self.backbone.forward_head(self._run_stages(features, stage, None)))

    def _run_stages(self, x: torch.Tensor, start: int, stop: int | None) -> torch.Tensor:
        for stage in self.backbone_stages()[start:stop]:
            if isinstance(stage, nn.ModuleList):
                for layer in stage:
                    x = layer(x)
            else:
                x = stage(x)
        return x

    def forward(self, images_a: torch.Tensor, images_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # One pass over both sides: BatchNorm sees a single batch, exactly as for `embed`.
        z = self.embed(torch.cat([images_a, images_b]))
        return z[: images_a.shape[0]], z[images_a.shape[0]:]

    def backbone_stages(self) -> list[nn.Module]:
        b = self.backbone
        return [nn.ModuleList([b.conv_stem, b.bn1]), *b.blocks, nn.ModuleList([b.conv_head, b.bn2])]

    def freeze_backbone(self, frozen: bool = True, trainable_stages: int = 0) -> None:
        """Stop training the backbone (all of it, or all but its last `trainable_stages`
        stages, counting the final 1x1 conv as one). Frozen BatchNorm layers stay in eval
        mode even under `model.train()`: updating running statistics of layers whose
        weights do not learn would shift the features under the head's feet."""
        stages = self.backbone_stages()
        if not 0 <= trainable_stages <= len(stages):
            raise ValueError(f"trainable_stages must be in [0, {len(stages)}], got {trainable_stages}")
        for p in self.backbone.parameters():
            p.requires_grad_(True)
        self._frozen_modules = []
        if frozen:
            self._frozen_modules = stages[: len(stages) - trainable_stages]
            for module in self._frozen_modules:
                for p in module.parameters():
                    p.requires_grad_(False)
        self.train(self.training)

    @property
    def backbone_frozen(self) -> bool:
        return bool(self._frozen_modules)

    def train(self, mode: bool = True) -> SiameseNet:
        super().train(mode)
        for module in self._frozen_modules:
            module.eval()
        return self


# --- checkpoints for verify / search / export -------------------------------------------

def save_model(model: SiameseNet, path: str | Path, extra: dict | None = None) -> None:
    """Architecture + weights in one file (loadable with `weights_only=True`); `extra` holds
    plain values such as the calibrated threshold."""
    save_torch_atomic({"kind": "cnnlab.siamese", "config": model.config.to_dict(),
                       "state_dict": model.state_dict(), "extra": dict(extra or {})}, path)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[SiameseNet, dict]:
    """(model in eval mode, extra) from a `save_model` file; no download is ever needed.

    The file is read with `weights_only=True` (a file holding code is refused, never run), and
    everything in it is checked before use, so a malformed file is one line naming it and what
    is wrong: not a model file, no or an unknown config, tensors that do not fit, bad extras."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"model file not found: {path}")
    blob = load_torch_file(path, "model file")
    if not isinstance(blob, dict) or blob.get("kind") != "cnnlab.siamese":
        hint = " (it is a training checkpoint; use the model.pt of a finished run)" \
            if isinstance(blob, dict) and "optimizer" in blob else ""
        raise CnnlabError(f"{path} is not a cnnlab Siamese model file{hint}")
    config = _config_from_file(path, blob.get("config"))
    extra = blob.get("extra", {})
    _check_extra(path, extra)
    model = SiameseNet.from_config(config, weights="none")
    model.config.weights = config.weights  # record where the weights originally came from
    load_state_dict_checked(model, blob.get("state_dict"), f"model file {path}")
    return model.to(device).eval(), extra


def _config_from_file(path: Path, values) -> SiameseConfig:
    if not isinstance(values, dict):
        raise CnnlabError(f"model file {path} holds no model config")
    known = {f.name for f in fields(SiameseConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CnnlabError(f"model file {path} has an unknown config key {unknown[0]!r} "
                          "(written by another cnnlab version?)")
    try:
        return SiameseConfig(**values)
    except (KeyError, ValueError, TypeError) as exc:
        raise CnnlabError(f"model file {path} has an invalid config: {exc.args[0] if exc.args else exc}") from None


def _check_extra(path: Path, extra) -> None:
    """The preprocessing and decision values verify/search/export read from `extra`: wrong
    types would fail deep inside decoding or comparisons, far from the file that caused them."""
    if not isinstance(extra, dict):
        raise CnnlabError(f"model file {path}: 'extra' is not a mapping")
    sizes = {k: extra[k] for k in ("crop", "input_size") if k in extra}
    for key, value in sizes.items():
        if key == "crop" and value is None:  # None: the largest centred square (FacePreprocess)
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CnnlabError(f"model file {path}: {key} must be a positive integer, got {value!r}")
    threshold = extra.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not math.isfinite(threshold) or threshold < 0):
        raise CnnlabError(f"model file {path}: threshold must be a finite number >= 0, got {threshold!r}")
    distance = extra.get("distance")
    if distance is not None and (not isinstance(distance, str) or distance not in DISTANCES):
        raise CnnlabError(f"model file {path}: unknown distance {distance!r}")
    if "calibration" in extra and not isinstance(extra["calibration"], dict):
        raise CnnlabError(f"model file {path}: calibration must be a mapping (from `faces calibrate`)")


# --- verification and search ------------------------------------------------------------

def _embed_eval(model: SiameseNet, images: torch.Tensor) -> torch.Tensor:
    with eval_mode(model):
        return model.embed(images.to(module_device(model)))


def verify(model: SiameseNet, img_a: torch.Tensor, img_b: torch.Tensor, threshold: float,
           distance: Distance | None = None):
    """Same person? `distance <= threshold`. Single images (3 x H x W) give
    (float, bool); batches (N x 3 x H x W) give (N distances, N booleans)."""
    distance = distance or EuclideanDistance()
    single = img_a.dim() == 3
    if single:
        img_a, img_b = img_a.unsqueeze(0), img_b.unsqueeze(0)
    if img_a.shape != img_b.shape:
        raise ValueError(f"image shapes differ: {tuple(img_a.shape)} vs {tuple(img_b.shape)}")
    z = _embed_eval(model, torch.cat([img_a, img_b]))
    d = distance.paired(z[: img_a.shape[0]], z[img_a.shape[0]:]).cpu()
    same = d <= threshold
    return (float(d[0]), bool(same[0])) if single else (d, same)


def search(model: SiameseNet, gallery_embeddings: torch.Tensor, query: torch.Tensor, k: int = 5,
           distance: Distance | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest gallery entries of each query image: (Q x k distances, Q x k gallery
    indices), nearest first. `query` is one image (3 x H x W) or a batch."""
    if query.dim() == 3:
        query = query.unsqueeze(0)
    return nearest_neighbours(_embed_eval(model, query), gallery_embeddings, k, distance or EuclideanDistance())
