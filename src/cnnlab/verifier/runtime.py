"""Ways to run a face model's `embed` on a batch of uint8 faces, chosen by what is fastest.

On a CPU onnxruntime runs the exported graph several times as fast as eager PyTorch, batched or
one image at a time, with or without channels_last (`benchmarks/bench_embed.py`; the numbers are
in docs/performance.md, "Face embedding throughput on the CPU"). So on a CPU the default ("auto")
exports the model once to ONNX (cached under `$CNNLAB_CACHE/onnx/`, keyed by the model fingerprint, checked against
PyTorch by `cnnlab.verifier.export` before it is ever used) and runs it with onnxruntime; on a GPU, or
without onnxruntime, eager PyTorch runs it.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cnnlab.core.errors import CnnlabError
from cnnlab.models.utils import eval_mode, module_device

RUNTIMES = ("auto", "onnxruntime", "torch", "torch-channels-last")
# Batch 16 on a CPU: onnxruntime's best batch in every measured run, and eager PyTorch gains
# nothing from larger ones (docs/performance.md), so 16 only bounds memory. On a GPU bigger
# batches only help.
DEFAULT_BATCH = {"onnxruntime": 16, "torch": 16, "torch-channels-last": 16}
GPU_BATCH = 128


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class TorchRuntime:
    """Eager PyTorch on the model's device, optionally with channels_last activations."""

    def __init__(self, model: torch.nn.Module, channels_last: bool = False):
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.channels_last = channels_last
        self.name = "torch-channels-last" if channels_last else "torch"

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(faces)).to(module_device(self.model)).permute(0, 3, 1, 2)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with eval_mode(self.model):
            return self.model.embed(x).float().cpu().numpy()


class OnnxRuntime:
    """The model's ONNX export run by onnxruntime on the CPU."""
    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, threads: int | None = None):
        import onnxruntime as ort
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # One session serves every call; its input is float32 RGB in [0, 1] (cnnlab.verifier.export).
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.path = Path(onnx_path)

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(faces.transpose(0, 3, 1, 2), dtype=np.float32)
        x *= np.float32(1.0 / 255.0)
        (z,) = self.session.run(None, {"images": x})
        return z


def onnx_cache_path(fingerprint: str) -> Path:
    from cnnlab.data.cache import cache_root
    return cache_root() / "onnx" / f"face-{fingerprint}.onnx"


def exported_onnx(model: torch.nn.Module, fingerprint: str, input_size: int,
                  log: Callable[[str], None] | None = None) -> Path:
    """The model's checked ONNX export, made once per fingerprint and reused from the cache."""
    path = onnx_cache_path(fingerprint)
    if not path.is_file():
        from cnnlab.verifier.export import export_onnx
        if log:
            log(f"exporting the model to {path} for onnxruntime (once per model)")
        export_onnx(model, path, input_size=input_size)
    return path


def create_runtime(name: str, model: torch.nn.Module, *, fingerprint: str, input_size: int,
                   threads: int | None = None, log: Callable[[str], None] | None = None):
    """A runtime by name; "auto" is onnxruntime on a CPU when it is installed, else torch."""
    if name not in RUNTIMES:
        raise CnnlabError(f"unknown runtime {name!r}; valid: {', '.join(RUNTIMES)}")
    on_cpu = module_device(model).type == "cpu"
    if name == "auto":
        name = "onnxruntime" if on_cpu and onnxruntime_available() else "torch"
    if name == "onnxruntime":
        if not on_cpu:
            raise CnnlabError("runtime 'onnxruntime' runs on the CPU; use device='cpu' or runtime='torch'")
        if not onnxruntime_available():
            raise CnnlabError("runtime 'onnxruntime' needs the onnxruntime package (pip install onnxruntime)")
        return OnnxRuntime(exported_onnx(model, fingerprint, input_size, log), threads=threads)
    return TorchRuntime(model, channels_last=name == "torch-channels-last")


def default_batch_size(runtime, device: torch.device) -> int:
    return GPU_BATCH if device.type == "cuda" else DEFAULT_BATCH[runtime.name]
