"""What the command line shows from the library, read without importing the library.

The recipe flags are the fields of the config dataclasses (`cnnlab.cli.flags`) and a few
choices are registries' names (blocks, ONNX runtimes, optuna samplers and pruners); all of them
live in modules that import torch, scikit-learn or optuna, seconds before a line of `--help`.
`catalog.json`, beside this module, holds what the CLI reads from them: each config's fields
(name, type, default, help text), the preset and registry names, and a hash of every source
file they come from. `load()` returns it while those files are unchanged and reads the library
itself otherwise, so the flags and their help are always the library's; the catalog only makes
them fast. `python -m cnnlab.cli.catalog` (`make catalog`) rewrites it; `tests/test_cli_help.py`
fails while it is out of date.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parents[1]
CATALOG_FILE = Path(__file__).with_name("catalog.json")
# The files the catalog is read from, relative to the package; a folder stands for its *.py.
SOURCES = (
    "core/config.py",             # option(), RUN_ONLY_FIELDS
    "core/registry.py",           # which registry names are defaults
    "training/engine.py",         # TrainConfig
    "tasks/classification.py",    # ClassificationConfig
    "models/blocknet.py",         # BlockNetConfig
    "models/siamese.py",          # SiameseConfig: FaceTrainConfig's model defaults
    "tasks/cifar.py",             # CifarDataConfig, the CIFAR presets
    "tasks/faces/config.py",      # FaceTrainConfig, the face presets
    "blocks",                     # the block registry
    "verifier/runtime.py",        # RUNTIMES
    "tune/samplers.py",           # SAMPLERS, PRUNERS
    "tune/study.py",              # DEFAULT_STUDY_NAME
    "tune/space.py",              # DEFAULT_SPACE_FILE
)
_loaded: dict | None = None


def load() -> dict:
    """The catalog: the stored one while its sources are unchanged, else read from the library."""
    global _loaded
    if _loaded is None:
        stored = _read_stored()
        _loaded = stored if stored is not None and stored.get("sources") == source_hashes() else build()
    return _loaded


def config_fields(name: str) -> list[dict]:
    """The fields of config dataclass `name` (e.g. "TrainConfig"), in declaration order: dicts
    with name, type ("int", "float", "str", "bool", "list" for a list of strings, a repeatable
    flag, or None for a field no flag can hold), default (of a default instance) and help."""
    return load()["configs"][name]


def is_current() -> bool:
    stored = _read_stored()
    return stored is not None and stored.get("sources") == source_hashes() and stored == build()


def source_hashes() -> dict[str, str | None]:
    hashes = {}
    for entry in SOURCES:
        path = PACKAGE / entry
        if not path.exists():  # moved or deleted: the catalog is out of date
            hashes[entry] = None
            continue
        for file in sorted(path.glob("*.py")) if path.is_dir() else [path]:
            text = file.read_bytes().replace(b"\r\n", b"\n")  # the same on a checkout with CRLF line ends
            hashes[file.relative_to(PACKAGE).as_posix()] = hashlib.sha256(text).hexdigest()
    return hashes


def _read_stored() -> dict | None:
    try:
        return json.loads(CATALOG_FILE.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------- read from the library
def build() -> dict:
    """The catalog read from the library (imports torch, scikit-learn and optuna)."""
    from cnnlab.blocks import BLOCKS
    from cnnlab.core.config import RUN_ONLY_FIELDS
    from cnnlab.models import BlockNetConfig
    from cnnlab.tasks.cifar import PRESETS as CIFAR_PRESETS
    from cnnlab.tasks.cifar import CifarDataConfig
    from cnnlab.tasks.classification import ClassificationConfig
    from cnnlab.tasks.faces import PRESETS as FACE_PRESETS
    from cnnlab.tasks.faces import FaceTrainConfig
    from cnnlab.training.engine import TrainConfig
    from cnnlab.tune.samplers import PRUNERS, SAMPLERS
    from cnnlab.tune.space import DEFAULT_SPACE_FILE
    from cnnlab.tune.study import DEFAULT_STUDY_NAME
    from cnnlab.verifier.runtime import RUNTIMES

    configs = {cls.__name__: _fields(cls) for cls in
               (TrainConfig, ClassificationConfig, BlockNetConfig, CifarDataConfig, FaceTrainConfig)}
    return {
        "sources": source_hashes(),
        "configs": configs,
        "run_only_fields": list(RUN_ONLY_FIELDS),
        "cifar_presets": list(CIFAR_PRESETS),
        "face_presets": list(FACE_PRESETS),
        "default_blocks": BLOCKS.default_names(),
        "runtimes": list(RUNTIMES),
        "samplers": SAMPLERS.names(),
        "pruners": PRUNERS.names(),
        "default_study_name": DEFAULT_STUDY_NAME,
        "default_space_file": DEFAULT_SPACE_FILE,
    }


def _fields(cls: type) -> list[dict]:
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    defaults = cls()  # a default instance: what __post_init__ makes of the declared defaults
    out = []
    for f in dataclasses.fields(cls):
        kind = _scalar_type(hints[f.name])
        out.append({"name": f.name, "type": kind, "default": getattr(defaults, f.name) if kind else None,
                    "help": f.metadata.get("help", "")})
    return out


def _scalar_type(annotation: Any) -> str | None:
    """"int", "float", "str" or "bool" for `int`, `bool | None`, `str | None`...; "list" for
    `list[str]` (a flag given once per item); None for a field no flag can hold (a dict)."""
    import types
    import typing

    if typing.get_origin(annotation) is list and typing.get_args(annotation) == (str,):
        return "list"
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar_type(args[0]) if len(args) == 1 else "str"
    return annotation.__name__ if annotation in (int, float, str, bool) else None


def write() -> Path:
    CATALOG_FILE.write_text(json.dumps(build(), indent=1) + "\n")
    return CATALOG_FILE


def main(argv: list[str] | None = None) -> int:
    """`python -m cnnlab.cli.catalog [--check]`: rewrite catalog.json, or say whether it is current."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--check"]:
        current = is_current()
        print(f"{CATALOG_FILE}: {'current' if current else 'out of date (run: python -m cnnlab.cli.catalog)'}")
        return 0 if current else 1
    print(f"wrote {write()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
