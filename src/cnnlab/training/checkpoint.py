"""Reading a run's checkpoint.pt: the state a resume continues from (`load_checkpoint`), the
config it must match (`comparable_config`), and the weights that are the run's result
(`load_weights`). The engine writes the file after each epoch."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from cnnlab.core import runfiles
from cnnlab.core.config import RUN_ONLY_FIELDS
from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import load_state_dict_checked, load_torch_file

CHECKPOINT = runfiles.CHECKPOINT


def load_checkpoint(run_dir: str | Path) -> dict:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise CnnlabError(f"no checkpoint at {path}")
    # weights_only: a file holding code is refused, never run; a malformed one is one line.
    return load_torch_file(path, "training checkpoint", required={"config": dict, "model": dict, "history": list})


def load_weights(run_dir: str | Path, model: nn.Module, *, prefer_ema: bool = True) -> nn.Module:
    """Load a run's result into `model`: the selected epoch's weights when the run selected one
    by a validation metric, else the last epoch's (the EMA weights when the run kept them)."""
    state = load_checkpoint(run_dir)
    ema = state.get("ema") if prefer_ema else None
    weights = (ema.get("module") if isinstance(ema, dict) else ema) if ema else state["model"]
    selected = state.get("selected")
    if isinstance(selected, dict) and selected.get("state") is not None:
        weights = selected["state"]  # the run's result is its selected epoch (of the evaluated model)
    load_state_dict_checked(model, weights, f"checkpoint {Path(run_dir) / CHECKPOINT}")
    return model


def comparable_config(config: dict) -> dict:
    """Flatten {"train": {...}, "task": {...}} to {"train.lr": ...}, leaving out the train settings
    that do not change the result (`RUN_ONLY_FIELDS`), so a mismatch can be named."""
    flat = {}
    for section, values in config.items():
        for key, value in (values.items() if isinstance(values, dict) else [("", values)]):
            if not (section == "train" and key in RUN_ONLY_FIELDS):
                flat[f"{section}.{key}" if key else section] = value
    return flat
