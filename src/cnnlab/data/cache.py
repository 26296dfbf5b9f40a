"""Decode once, cache as uint8 arrays: the one image cache that CIFAR and faces both use.

A cache entry is keyed by what produced it (the source files' paths and contents, plus the
preprocessing spec), so editing or replacing a source file invalidates it, while copying the
data again (new mtimes, same bytes) does not; it lives outside the (read-only) data folder:
`$CNNLAB_CACHE`, else `~/.cache/cnnlab`.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from cnnlab.core.env import cache_root
from cnnlab.core.files import save_npz_atomic


def file_sha256(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes (OSError if it cannot be read)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fingerprint(paths: Iterable[str | Path], spec: dict | None = None) -> str:
    """A hash of every source file's path and bytes (or why it cannot be read), and of the
    preprocessing spec.

    Contents, not mtimes: a data set that is copied or extracted again gets new mtimes but the
    same bytes, and re-running MTCNN on 13k LFW images because of that costs minutes, while
    reading them to hash costs about a second (LFW: 13,233 files, 110 MB)."""
    h = hashlib.sha256()
    h.update(json.dumps(spec or {}, sort_keys=True, default=str).encode())
    for p in paths:
        try:
            state = file_sha256(p)
        except OSError as exc:
            # A symlink loop or broken link is keyed by its error: the decoder names it, and
            # the entry is rebuilt once the file is fixed.
            state = f"error {exc.errno}"
        h.update(f"{os.path.abspath(p)}\0{state}\n".encode())
    return h.hexdigest()[:20]


class ArrayCache:
    """`ArrayCache().load_or_build(name, key, build)`: npz of named arrays, written atomically."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else cache_root()
        self.last_hit: bool | None = None

    def path(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key}.npz"

    def load_or_build(self, name: str, key: str,
                      build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        path = self.path(name, key)
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as data:
                    arrays = {k: data[k] for k in data.files}
                self.last_hit = True
                return arrays
            except (OSError, ValueError):
                path.unlink(missing_ok=True)  # a damaged entry is rebuilt, not trusted
        arrays = build()
        self.last_hit = False
        save_npz_atomic(path, arrays)
        return arrays
