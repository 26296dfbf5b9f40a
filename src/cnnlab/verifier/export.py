"""ONNX export of a Siamese model's `embed` (ONNX: the Open Neural Network Exchange format).

The exported graph takes `images`, float32 RGB in [0, 1], N x 3 x H x W with a dynamic
batch N, and returns `embeddings`, N x D; the backbone's normalisation is inside the graph.
Every export is checked: `onnx.checker`, then the outputs compared with PyTorch's on the
same random batch (with onnxruntime, else onnx's reference evaluator).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import atomic_path, check_output_dir, first_line
from cnnlab.models.utils import eval_mode


class _EmbedModule(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images)


@dataclass
class OnnxExport:
    """The ONNX file `export_onnx` wrote and how its outputs were checked against PyTorch."""
    path: Path
    opset: int
    input_size: int
    runtime: str            # what checked the outputs: "onnxruntime" or "onnx.reference"
    max_abs_diff: float     # largest |onnx - torch| over the check batch

    def to_dict(self) -> dict:
        return {"path": str(self.path), "opset": self.opset, "input_size": self.input_size,
                "runtime": self.runtime, "max_abs_diff": self.max_abs_diff}


def run_onnx(path: str | Path, images: np.ndarray) -> tuple[np.ndarray, str]:
    """Embeddings from an exported file: (N x D array, name of the runtime that ran it)."""
    try:
        import onnxruntime as ort
    except ImportError:
        import onnx
        from onnx.reference import ReferenceEvaluator
        (out,) = ReferenceEvaluator(onnx.load(str(path))).run(None, {"images": images})
        return out, "onnx.reference"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"images": images})
    return out, "onnxruntime"


def export_onnx(model: nn.Module, path: str | Path, input_size: int | None = None, opset: int = 17,
                check_batch: int = 2, atol: float = 1e-4, seed: int = 0) -> OnnxExport:
    """Write `model.embed` to `path` as ONNX and prove the file computes the same embeddings.

    `input_size` defaults to the model's `data_config.input_size`. A mismatch beyond `atol`
    deletes the file and raises, so a wrong export never sits next to good results.
    """
    import onnx

    path = Path(path)
    if path.is_dir():
        raise CnnlabError(f"{path} is a folder; give the name of the .onnx file to write")
    check_output_dir(path.parent, what="output folder")
    size = int(input_size or model.data_config.input_size)
    wrapper = _EmbedModule(model)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    # The check batch differs from the trace batch in size, which proves the batch axis is dynamic.
    trace_input = torch.rand(1, 3, size, size, generator=generator)
    check_input = torch.rand(check_batch, 3, size, size, generator=generator)
    with atomic_path(path, suffix=".onnx") as tmp:
        with eval_mode(model), warnings.catch_warnings():
            wrapper.eval()  # the exporter restores the mode it finds: let that be eval
            # The TorchScript exporter's deprecation notice is not the user's concern.
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(wrapper, (trace_input.to(device),), str(tmp), input_names=["images"],
                                  output_names=["embeddings"], opset_version=opset, dynamo=False,
                                  dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}})
            except Exception as exc:  # e.g. an operator this opset lacks: the exporter's own words, one line
                raise CnnlabError(f"cannot export to ONNX opset {opset}: {first_line(exc)}") from None
            expected = wrapper(check_input.to(device)).cpu().numpy()
        onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)
        actual, runtime = run_onnx(tmp, check_input.numpy())
        # Raising inside `atomic_path` deletes the file: a wrong export never sits next to good results.
        if actual.shape != expected.shape:
            raise CnnlabError(f"ONNX export gave shape {actual.shape}, PyTorch {expected.shape}")
        diff = float(np.abs(actual - expected).max())
        if not diff <= atol:
            raise CnnlabError(f"ONNX export differs from PyTorch by {diff:.2e} (> {atol:.0e}); file not written")
    return OnnxExport(path=path, opset=opset, input_size=size, runtime=runtime, max_abs_diff=diff)


def write_export_metadata(export: OnnxExport, model: nn.Module, extra: dict | None = None) -> Path:
    """`<file>.json` beside the ONNX file: input size, normalisation (already in the graph),
    embedding size and anything else a consumer needs, e.g. the calibrated threshold."""
    from cnnlab.core.files import write_json

    meta = {**export.to_dict(), "input": "float32 RGB in [0, 1], N x 3 x H x W",
            "data_config": model.data_config.to_dict(), "embedding_dim": model.embedding_dim,
            "model_config": model.config.to_dict(), **(extra or {})}
    out = export.path.with_suffix(".json")
    write_json(out, meta)
    return out
