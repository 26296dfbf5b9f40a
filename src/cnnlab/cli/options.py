"""Options several commands share: the face training recipe (`faces train|margins|baseline|tune`),
the LFW folder, and checked flag value types (`distance_threshold`, `onnx_opset`). Recipe flags
come from the dataclass through `cnnlab.cli.flags.add_config_flags`, the one dataclass-to-flags
generator of every CLI."""
from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from cnnlab.cli import catalog
from cnnlab.cli.flags import add_config_flags


def add_face_recipe_flags(p: argparse.ArgumentParser) -> None:
    """--preset, --config and one flag per FaceTrainConfig field."""
    g = p.add_argument_group("training recipe (every field of FaceTrainConfig; defaults from --preset, "
                             "then --config)")
    g.add_argument("--config", metavar="FILE", help="YAML mapping of FaceTrainConfig fields (e.g. a tuner's best.yaml)")
    g.add_argument("--preset", choices=sorted(catalog.load()["face_presets"]), default="cpu",
                   help="cpu (default): cached-feature partial fine-tuning on LFW's training people and "
                        "CelebA's ($CNNLAB_DATA/celeba; 500 of its people held out as a second validation set); "
                        "lfw: the same on LFW's people alone; demo: make demo's smaller run (LFW only, 400 "
                        "training people, 128 px, the test pairs' images only, the random search's best knobs); "
                        "finetune: end-to-end (GPU, LFW only)")
    add_config_flags(g, "FaceTrainConfig")  # help texts: on the fields (`config.option`)


def explicit_face_fields(args: argparse.Namespace) -> dict:
    """The FaceTrainConfig fields given as flags (None: not given)."""
    from cnnlab.tasks.faces import FaceTrainConfig
    return {f.name: getattr(args, f.name, None) for f in dataclasses.fields(FaceTrainConfig)}


def face_config_from_args(args: argparse.Namespace, *, trains: bool = True):
    """--preset, then --config, then flags, into one validated FaceTrainConfig. For a command
    that trains nothing (`trains=False`) the preset brings no training people: only what the
    user gave, which that command then refuses."""
    from cnnlab.core.config import build_config
    from cnnlab.core.files import load_yaml
    from cnnlab.tasks.faces import PRESETS, FaceTrainConfig, check_preset_data
    file_values = load_yaml(args.config) if args.config else None
    preset = {k: v for k, v in PRESETS[args.preset].items() if trains or k != "extra_train"}
    config = build_config(FaceTrainConfig, preset, file_values, explicit_face_fields(args))
    check_preset_data(args.preset, config)
    return config


def add_lfw_flag(p: argparse.ArgumentParser | argparse._ArgumentGroup, help: str | None = None) -> None:
    p.add_argument("--data", metavar="DIR",
                   help=help or "LFW folder with the protocol files (default: $CNNLAB_DATA/lfw)")


def lfw_root_from_args(args: argparse.Namespace) -> Path:
    from cnnlab.tasks.faces import default_lfw_root
    return Path(args.data) if args.data else default_lfw_root()


# ---------------------------------------------------------------------------- flag value types
# argparse `type=` functions: a bad value is argparse's one-line usage error (exit 2) before
# any file is read, never a traceback or a silently meaningless result.
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def port_number(text: str) -> int:
    """A TCP port to listen on: 1-65535 (the socket layer raises OverflowError above)."""
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def distance_threshold(text: str) -> float:
    """A verification threshold: a distance, so finite and >= 0. nan compares false with
    every distance (everyone would be "different people"), inf true (everyone the same)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"a distance threshold must be a finite number >= 0, got {text}")
    return value


def onnx_opset_range() -> tuple[int, int]:
    """The ONNX opsets the installed PyTorch's TorchScript exporter (what `cnnlab.verifier.export`
    uses) can write; torch keeps the bounds in a private module, so fall back to torch 2.x's."""
    try:
        from torch.onnx import _constants
        return int(_constants.ONNX_MIN_OPSET), int(_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except (ImportError, AttributeError):
        return 7, 20


def onnx_opset(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    low, high = onnx_opset_range()
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"this PyTorch exports ONNX opsets {low}-{high}, got {value}")
    return value
