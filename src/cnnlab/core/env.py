"""What a run needs to record about where it ran, the device choice shared by every command, and
where the data sets and the cache are (`data_root`, `cache_root`: each environment variable is
read there only). Imports torch only where a function needs it."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab.core.errors import CnnlabError

if TYPE_CHECKING:
    import torch

DATA_ENV = "CNNLAB_DATA"
CACHE_ENV = "CNNLAB_CACHE"


def cache_root() -> Path:
    """Where cnnlab keeps what it can rebuild (decoded images, ONNX files, downloads): outside
    the data folder, which may be read-only. $CNNLAB_CACHE, else ~/.cache/cnnlab."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "cnnlab")


def data_root() -> tuple[Path, str]:
    """The folder holding the real data sets (`cifar10-jpg/`, `lfw/`, ...) and what named it, for
    messages: $CNNLAB_DATA (the Makefile sets it to ../shared/data), else the folder a download
    fills (`datasets/` in the cache). A command's --data flag, where it has one, comes first."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser(), DATA_ENV
    return cache_root() / "datasets", "the default download folder"


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else CPU; asking for CUDA without one is an error."""
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CnnlabError(f"device {name!r} requested but CUDA is not available; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise CnnlabError(f"unknown device {name!r}: {exc}") from None


# Precision. `auto` trains in bf16 autocast where bf16 is faster than fp32: on CUDA, and on a
# CPU with AMX-BF16 tile units (Sapphire Rapids and later). Without AMX (AVX-512 or AVX2 only)
# oneDNN's bf16 convolutions are not faster than fp32, so fp32 is kept. `auto-cuda` is for
# networks that gain nothing from bf16 on a CPU even with AMX (the face recipe's depthwise
# convolutions). Measured: docs/performance.md, "bf16 on the CPU".
PRECISIONS = ("auto", "auto-cuda", "fp32", "bf16")
BF16_CPU_FLAG = "amx_bf16"
# The /proc/cpuinfo flags recorded with every run: what decided the precision, and its neighbours.
CPU_FLAGS_RECORDED = ("amx_bf16", "amx_tile", "amx_fp16", "avx512_bf16", "avx512_fp16", "avx512f", "avx2")


def cpu_info(cpuinfo: str | Path | None = None) -> dict:
    """The CPU's model name and the flags in `CPU_FLAGS_RECORDED` it has, from /proc/cpuinfo
    (Linux); elsewhere the platform's processor string and no flags (so `auto` stays fp32)."""
    path = Path(cpuinfo) if cpuinfo is not None else Path("/proc/cpuinfo")
    model, flags = None, set()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return {"model": model or platform.processor() or platform.machine(),
            "flags": sorted(f for f in CPU_FLAGS_RECORDED if f in flags)}


def resolve_precision(precision: str, device: torch.device, cpu_flags: Iterable[str] | None = None) -> tuple[str, str]:
    """(`bf16` or `fp32`, why) for a requested precision on `device`. `cpu_flags` defaults to
    this machine's (`cpu_info`); tests pass made-up ones."""
    if precision not in PRECISIONS:
        raise CnnlabError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision in ("fp32", "bf16"):
        return precision, "asked for"
    if device.type == "cuda":
        return "bf16", f"{precision} on CUDA"
    if device.type != "cpu":
        return "fp32", f"{precision} on {device.type}"
    if precision == "auto-cuda":
        return "fp32", "auto-cuda on a CPU (this network gains nothing from bf16 there)"
    flags = set(cpu_info()["flags"] if cpu_flags is None else cpu_flags)
    if BF16_CPU_FLAG in flags:
        return "bf16", f"auto on a CPU with {BF16_CPU_FLAG}"
    return "fp32", f"auto on a CPU without {BF16_CPU_FLAG} (bf16 is not faster there)"


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
    import torch.distributed
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return {"world_size": torch.distributed.get_world_size(), "backend": str(torch.distributed.get_backend())}
    world_size = launch_ranks()[1]
    backend = distributed_backend(device) if world_size > 1 and device is not None else None
    return {"world_size": world_size, "backend": backend}


def device_name(device: torch.device) -> str:
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def environment(device: torch.device | None = None, precision: dict | None = None) -> dict:
    """Versions, CPU (model name and the flags that decide the precision), device, world size;
    `precision` ({"requested", "used", "reason"}) when the caller has resolved one."""
    import numpy
    import torch
    cpu = cpu_info()
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu.get("model"),
        "cpu_flags": cpu.get("flags"),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    # Read versions from package metadata: importing timm/sklearn/torchvision just to ask
    # costs seconds in every fresh process (tuning workers, tests).
    for key, package in (("torchvision", "torchvision"), ("timm", "timm"), ("sklearn", "scikit-learn"),
                         ("optuna", "optuna")):
        try:
            info[key] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:  # missing optional package: information
            info[key] = None
    from cnnlab import __version__
    info["cnnlab"] = __version__
    if device is not None:
        info["device"] = str(device)
        info["device_name"] = device_name(device)
    if precision is not None:
        info["precision"] = dict(precision)
    info.update(distributed_setup(device))
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
    return info
