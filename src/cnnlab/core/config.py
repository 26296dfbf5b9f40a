"""Dataclass configs filled from presets, YAML files and CLI flags, saved next to every run.

`build_config` merges mappings into a dataclass: values are type-checked against the fields
first (a YAML file can hold anything), then the dataclass's `__post_init__` validates them.
`option(default, help)` declares a field with its help text, which the CLI layer
(`cnnlab.cli.flags`) turns into the field's flag; `option_from(cls, name, ...)` declares a field
another config already has (the face recipe's `lr` is the engine's), with that field's help.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from typing import Any, TypeVar, Union

from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import load_yaml, to_plain  # noqa: F401  (re-exported: configs are read and written here)

T = TypeVar("T")

# Settings that say where and how visibly a run happens, not what it computes: they may differ
# between a run and its resume, between tuning workers, and are left out of comparisons.
# sync_bn belongs here with the process count it depends on (neither is part of a recipe).
RUN_ONLY_FIELDS = ("device", "progress", "compile", "sync_bn", "tensorboard")


def option(default: Any, help: str) -> Any:
    """A config field with its help text, written once, on the field: the CLI's flag (`--help`)
    reads it from the field's metadata (`cnnlab.cli.flags`). Mutable defaults are copied per
    instance."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def option_from(cls: type, name: str, default: Any = dataclasses.MISSING, *, note: str = "") -> Any:
    """A field that dataclass `cls` declares too, for a config whose values fill `cls`'s by name:
    `cls`'s help text (and `note`, what this config adds, after a semicolon) and `cls`'s default
    unless `default` is given."""
    source = {f.name: f for f in dataclasses.fields(cls)}[name]
    if default is dataclasses.MISSING:
        default = (source.default if source.default is not dataclasses.MISSING else source.default_factory())
    return option(default, source.metadata["help"] + (f"; {note}" if note else ""))


def build_config(cls: type[T], *sources: dict | None) -> T:
    """Merge mappings (later wins, None values ignored) into dataclass `cls`; a source that is
    not a mapping, unknown keys and invalid values become a one-line CnnlabError."""
    names = {f.name for f in dataclasses.fields(cls)}
    merged: dict[str, Any] = {}
    for source in sources:
        if source is not None and not isinstance(source, dict):
            raise CnnlabError(f"invalid {cls.__name__}: expected a mapping of its options (key: value), "
                              f"got {_kind_of(source)} {source!r}")
        for key, value in (source or {}).items():
            if value is None:
                continue
            if key not in names:
                raise CnnlabError(f"unknown {cls.__name__} option {key!r}; valid: {', '.join(sorted(names))}")
            merged[key] = value
    hints = typing.get_type_hints(cls)
    merged = {key: _typed(cls.__name__, key, hints[key], value) for key, value in merged.items()}
    try:
        return cls(**merged)
    except (TypeError, ValueError, KeyError) as exc:
        msg = exc.args[0] if exc.args else str(exc)
        raise CnnlabError(f"invalid {cls.__name__}: {msg}") from None


def _typed(owner: str, key: str, annotation: Any, value: Any) -> Any:
    """`value` checked against a scalar field's annotation, before any work: a YAML file can
    hold anything (`epochs: 1.5`, `epochs: true`, `lr: 1e-3`, which PyYAML reads as a string).
    Number strings become numbers (on purpose: PyYAML 1.1 reads `1e-3` as a string, so the
    value everyone writes is accepted; docs/training.md says so), whole floats become ints;
    anything else is a one-line error naming the key. A field of a sequence of numbers
    (`depths: tuple[int, ...]`) takes a list whose items are checked the same way; other
    fields (strings lists, dicts) are left to the dataclass."""
    union = typing.get_origin(annotation) in (Union, types.UnionType)
    choices = [a for a in typing.get_args(annotation) if a is not type(None)] if union else [annotation]
    if len(choices) == 1 and typing.get_origin(choices[0]) in (tuple, list):
        return _typed_items(owner, key, choices[0], value)
    if len(choices) != 1 or choices[0] not in _KIND_NAMES:
        return value
    kind = choices[0]
    wrong = CnnlabError(f"invalid {owner}: {key} must be {_KIND_NAMES[kind]}, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise wrong
    if kind is str:
        if isinstance(value, str):
            return value
        raise wrong
    if isinstance(value, bool):  # bool is an int to Python, never a number to a user
        raise wrong
    if isinstance(value, str):
        try:
            value = float(value.strip()) if kind is float else int(value.strip())
        except ValueError:
            try:
                value = float(value.strip())  # "1e2" for an int field
            except ValueError:
                raise wrong from None
    if kind is float and isinstance(value, (int, float)):
        return value
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is int and isinstance(value, int):
        return value
    raise wrong


def _typed_items(owner: str, key: str, annotation: Any, value: Any) -> Any:
    """A list (or tuple) for a `tuple[int, ...]` / `list[float]` field, each item checked as a
    number field would be; a string is not a sequence of numbers here (`depths: "abc"`)."""
    args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
    if len(set(args)) != 1 or args[0] not in (int, float):
        return value
    kind = args[0]
    if not isinstance(value, (list, tuple)):
        raise CnnlabError(f"invalid {owner}: {key} must be a list of {_PLURAL_NAMES[kind]}, got {value!r}")
    try:
        items = [_typed(owner, key, kind, item) for item in value]
    except CnnlabError:
        raise CnnlabError(f"invalid {owner}: {key} must be a list of {_PLURAL_NAMES[kind]}, "
                          f"got {value!r}") from None
    return type(value)(items)


def _kind_of(value: Any) -> str:
    return {list: "a list", tuple: "a list", str: "a string", bool: "true/false", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


_KIND_NAMES = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}
_PLURAL_NAMES = {int: "whole numbers", float: "numbers"}
