"""Tiny face models and galleries for the verifier, index and service tests: a Lite0 at 32 px,
trained for a few epochs on synthetic identities (or only built, where training adds nothing),
and identity folders of synthetic faces written as image files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnlab.models.siamese import SiameseNet, save_model
from test_faces_train import SIDE, make_fake_lfw, person_image, person_pattern, quiet, tiny_config


def train_tiny_model(root: Path) -> Path:
    """model.pt of a View 1 run on a fake LFW tree (a calibrated threshold included)."""
    from cnnlab.tasks.faces import train_view1
    lfw = make_fake_lfw(root / "lfw")
    out = root / "run"
    train_view1(tiny_config(epochs=2), lfw, out, evaluate_test=False, log=quiet)
    return out / "model.pt"


def build_tiny_model(path: Path, seed: int = 0, threshold: float = 0.5, **extra) -> Path:
    """An untrained model file with everything `faces train` stores beside the weights."""
    torch.manual_seed(seed)
    model = SiameseNet(weights="none", input_size=32, embedding_dim=16)
    save_model(model, path, extra={"threshold": threshold, "distance": "euclidean", "crop": SIDE,
                                   "input_size": 32, **extra})
    return path


def make_gallery(root: Path, people: int = 5, per_person: int = 3, flat: int = 0, seed: int = 1) -> Path:
    """`root/<person>/<n>.png` (plus `flat` images directly in root), each person one pattern."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for p in range(people):
        pattern = person_pattern(rng)
        (root / f"person{p:02d}").mkdir()
        for n in range(per_person):
            Image.fromarray(person_image(pattern, rng)).save(root / f"person{p:02d}" / f"{n}.png")
    for n in range(flat):
        Image.fromarray(person_image(person_pattern(rng), rng)).save(root / f"loose{n}.png")
    return root


def face_bytes(seed: int, fmt: str = "PNG") -> bytes:
    import io
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(person_image(person_pattern(rng), rng)).save(buffer, format=fmt)
    return buffer.getvalue()
