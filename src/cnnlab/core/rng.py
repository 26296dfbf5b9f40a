"""Random state of a run: seeding every generator before the model is built, and saving and
restoring them all in a checkpoint, so a resumed run draws exactly what an uninterrupted one
would have drawn."""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices); call before building the model so the
    initial weights are repeatable too."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    # Tensors and plain numbers only, so torch.load(weights_only=True) can read it back.
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            # The current GPU's only: reading every GPU's would give each DDP process a CUDA
            # context (memory) on all of them.
            "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else [],
            "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
            "python": torch.tensor(py_state[1], dtype=torch.int64)}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(int(v) for v in state["python"]), None))


def rank_seed(seed: int, rank: int, epoch: int) -> int:
    """A seed of its own for each data-parallel rank and epoch: dropout masks then differ
    between ranks (one seed everywhere would repeat them), and a resumed run draws what an
    uninterrupted one would."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1, np.uint64)[0] >> 1)
