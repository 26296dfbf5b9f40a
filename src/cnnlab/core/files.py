"""Every file cnnlab writes goes through `atomic_path`: a temporary file in the same folder,
then a rename. A crash, a kill -9 or a full disk therefore leaves either the previous file or
the new one, never half of one that a later report, resume or search would trust.

The readers here (`read_json`, `load_yaml`, `load_torch_file`, `load_state_dict_checked`) turn a
missing, malformed or code-holding file into a one-line `CnnlabError` instead of a traceback,
and `check_output_dir` says before any work whether a command's output folder can be written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cnnlab.core.errors import CnnlabError


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


def save_npz_atomic(path: str | Path, arrays: dict[str, np.ndarray], *, compressed: bool = False) -> Path:
    """An npz of named arrays (read back with `allow_pickle=False`); `compressed` for files
    of names, which shrink several times, not for caches read often."""
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
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


# ---------------------------------------------------------------------------- before any work
def check_output_dir(path: str | Path, what: str = "--out") -> Path:
    """Fail on one line, before any data is loaded, when `path` cannot become the folder a
    command writes into: an existing file, a path under a file, a folder that cannot be
    written. Creates nothing; the writers create the folder when they first write.

    Writability is probed by creating (and removing) a temporary file in the folder, or in its
    nearest existing parent when the folder does not exist yet: permission bits alone would
    mislead for root, who may write anywhere except on a read-only file system, and the
    probe answers for both."""
    path = existing = Path(path)
    try:
        if os.path.lexists(path) and not path.is_dir():
            raise CnnlabError(f"{what} {path} is an existing file, not a folder")
        while not os.path.lexists(existing) and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise CnnlabError(f"{what} {path} cannot be created: {existing} is a file, not a folder")
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".cnnlab-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:  # PermissionError, a read-only file system, a full disk
        where = "" if existing == path else f" (in {existing})"
        raise CnnlabError(f"{what} {path} is not writable{where}: {exc.strerror or type(exc).__name__}") from None
    return path


def check_output_file(path: str | Path, what: str = "--out") -> Path:
    """`check_output_dir` for a file a command will write: not an existing folder, and its
    folder can be created and written. Checked before any work, so a bad path costs nothing."""
    path = Path(path)
    if path.is_dir():
        raise CnnlabError(f"{what} {path} is an existing folder, not a file")
    check_output_dir(path.parent if str(path.parent) else Path("."), what=f"{what} {path}: folder")
    return path


# ---------------------------------------------------------------------------- reading torch files
def first_line(exc: BaseException) -> str:
    """`Type: first line of the message`: foreign messages run to paragraphs."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__


def load_torch_file(path: str | Path, what: str, required: dict[str, type] | None = None) -> Any:
    """`torch.load(path, weights_only=True)`: tensors and plain containers only, so a file
    that holds code is refused, never run. Every failure is one line naming the file; a
    refusal is cnnlab's own line, never PyTorch's advice to retry with `weights_only=False`
    (which would run the code). `what` names the kind of file ("model file", "training
    checkpoint"); `required` maps keys the file's dict must hold to their types."""
    import pickle

    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's notes on a file's pickle protocol: not the user's concern
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # What weights_only refuses (code, or objects it does not allow), and files that are
        # not pickles at all: either way not a file cnnlab wrote.
        raise CnnlabError(f"{path} is not a cnnlab {what}, or it holds code; it was not loaded") from None
    except OSError as exc:  # permission denied, an I/O error: the file may be fine
        raise CnnlabError(f"cannot read {what} {path}: {exc.strerror or first_line(exc)}") from None
    except Exception as exc:  # a truncated zip, an empty file, an unreadable one: say which, on one line
        if "weights_only" in str(exc):  # any other wording of a refusal
            raise CnnlabError(f"{path} is not a cnnlab {what}, or it holds code; it was not loaded") from None
        raise CnnlabError(f"cannot read {what} {path} (truncated, or not a PyTorch file): {first_line(exc)}") from None
    if required is not None:
        if not isinstance(data, dict):
            raise CnnlabError(f"{path} is not a cnnlab {what}: it holds a {type(data).__name__}, not a mapping")
        for key, kind in required.items():
            if not isinstance(data.get(key), kind):
                state = "has no" if key not in data else "has a malformed"
                raise CnnlabError(f"{path} is not a cnnlab {what}: it {state} {key!r} entry")
    return data


def load_state_dict_checked(model: Any, state: Any, origin: str) -> None:
    """`model.load_state_dict(state)` after checking names and shapes, so a file that does not
    fit is one line naming `origin` and the first offending tensor (PyTorch's error lists
    every key, over many lines)."""
    import torch

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CnnlabError(f"{origin} holds no state dict of tensors")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]!r}")
    if unexpected:
        problems.append(f"{len(unexpected)} unknown tensor(s), e.g. {unexpected[0]!r}")
    if mis_shaped:
        k = mis_shaped[0]
        problems.append(f"{len(mis_shaped)} tensor(s) of the wrong shape, e.g. {k!r} is "
                        f"{tuple(state[k].shape)}, expected {tuple(expected[k].shape)}")
    if problems:
        raise CnnlabError(f"{origin} does not fit the model: {'; '.join(problems)}")
    model.load_state_dict(state)


def load_entries(state: dict, loaders: dict[str, Callable[[Any], Any] | None], origin: str) -> None:
    """`loaders[key](state[key])` for each key (None: skipped), e.g. an optimizer's and a
    scheduler's state from a checkpoint. An entry that does not fit (a file altered after it
    was written) is one line naming `origin` and the entry."""
    for key, load in loaders.items():
        if load is None:
            continue
        try:
            load(state[key])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
            raise CnnlabError(f"{origin}: its {key!r} entry does not fit this run ({first_line(exc)})") from None
