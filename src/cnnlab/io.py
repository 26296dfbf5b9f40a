"""Every file cnnlab writes goes through `atomic_path`: a temporary file in the same folder,
then a rename. A crash, a kill -9 or a full disk therefore leaves either the previous file or
the new one, never half of one that a later report, resume or search would trust.

The readers here (`read_json`, `load_yaml`) turn a missing or malformed file into a one-line
`CnnlabError` instead of a traceback.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import yaml

from cnnlab.errors import CnnlabError


def to_plain(obj: Any) -> Any:
    """Dataclasses, paths and tuples as plain JSON/YAML values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on any exception it
    is removed and `path` is untouched. `suffix` keeps writers that look at the extension
    (matplotlib, numpy) happy."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or ".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(to_plain(data), indent=2) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_yaml(data: Any, path: str | Path) -> Path:
    return atomic_write_text(path, yaml.safe_dump(to_plain(data), sort_keys=False))


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CnnlabError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CnnlabError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def save_npz_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """An uncompressed npz of named arrays (read back with `allow_pickle=False`)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def save_torch_atomic(obj: Any, path: str | Path) -> Path:
    """`torch.save` of plain containers and tensors, loadable with `weights_only=True`."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def write_with(path: str | Path, writer: Callable[[Path], Any], suffix: str = "") -> Path:
    """Let a library that writes to a path (matplotlib's savefig, onnx export) write
    atomically: `writer(tmp)` fills the temporary file."""
    with atomic_path(path, suffix=suffix) as tmp:
        writer(tmp)
    return Path(path)
