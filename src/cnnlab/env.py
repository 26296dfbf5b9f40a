"""What a run needs to record about where it ran, and the device choice shared by every command."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

import torch

from cnnlab.errors import CnnlabError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CnnlabError(f"device {name!r} requested but CUDA is not available; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise CnnlabError(f"unknown device {name!r}: {exc}") from None


def launch_ranks() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) as `torchrun` (or any env:// launcher) sets them in each
    process it starts; (0, 1, 0) in a plainly started one."""
    values = []
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        raw = os.environ.get(name, "").strip()
        try:
            values.append(int(raw) if raw else default)
        except ValueError:
            raise CnnlabError(f"environment variable {name} must be an integer, got {raw!r}") from None
    rank, world_size, local_rank = values
    if world_size < 1 or not 0 <= rank < world_size:
        raise CnnlabError(f"RANK={rank} and WORLD_SIZE={world_size} do not describe a process of a run")
    return rank, world_size, local_rank


def distributed_backend(device: torch.device) -> str:
    """The process-group backend for a device: NCCL between GPUs, Gloo on CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def distributed_setup(device: torch.device | None = None) -> dict:
    """How many processes train together and over which backend: from the live process group,
    else from what the launcher asked for (world_size 1 and no backend for a plain process)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return {"world_size": dist.get_world_size(), "backend": str(dist.get_backend())}
    world_size = launch_ranks()[1]
    backend = distributed_backend(device) if world_size > 1 and device is not None else None
    return {"world_size": world_size, "backend": backend}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def environment(device: torch.device | None = None) -> dict:
    import numpy
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    # Read versions from package metadata: importing timm/sklearn/torchvision just to ask
    # costs seconds in every fresh process (tuning workers, tests).
    for key, dist in (("torchvision", "torchvision"), ("timm", "timm"), ("sklearn", "scikit-learn"),
                      ("optuna", "optuna")):
        try:
            info[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:  # missing optional package: information
            info[key] = None
    from cnnlab import __version__
    info["cnnlab"] = __version__
    if device is not None:
        info["device"] = str(device)
        info["device_name"] = device_name(device)
    info.update(distributed_setup(device))
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
    return info
