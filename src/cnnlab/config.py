"""Dataclass configs filled from YAML files and CLI flags, saved next to every run."""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cnnlab.errors import CnnlabError

T = TypeVar("T")


def to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
    os.replace(tmp, path)


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(to_plain(data), indent=2) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_yaml(data: Any, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_plain(data), sort_keys=False))


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


def build_config(cls: type[T], *sources: dict | None) -> T:
    """Merge mappings (later wins, None values ignored) into dataclass `cls`; unknown keys
    and invalid values become a one-line CnnlabError."""
    names = {f.name for f in dataclasses.fields(cls)}
    merged: dict[str, Any] = {}
    for source in sources:
        for key, value in (source or {}).items():
            if value is None:
                continue
            if key not in names:
                raise CnnlabError(f"unknown {cls.__name__} option {key!r}; valid: {', '.join(sorted(names))}")
            merged[key] = value
    try:
        return cls(**merged)
    except (TypeError, ValueError, KeyError) as exc:
        msg = exc.args[0] if exc.args else str(exc)
        raise CnnlabError(f"invalid {cls.__name__}: {msg}") from None
