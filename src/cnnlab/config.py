"""Dataclass configs filled from presets, YAML files and CLI flags, saved next to every run.

`build_config` merges mappings into a dataclass (validation lives in its `__post_init__`);
`add_config_flags` is the one place where a dataclass becomes command-line flags, for every
CLI: a field `batch_size` is the flag `--batch-size`, typed from its annotation, default None
so that "not given" never overrides a preset or a `--config` file.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar, Union

from cnnlab.errors import CnnlabError
from cnnlab.io import load_yaml, to_plain  # noqa: F401  (re-exported: configs are read and written here)

T = TypeVar("T")

# Settings that say where and how visibly a run happens, not what it computes: they may differ
# between a run and its resume, between tuning workers, and are left out of comparisons.
# sync_bn belongs here with the process count it depends on (neither is part of a recipe).
RUN_ONLY_FIELDS = ("device", "progress", "compile", "sync_bn", "tensorboard")


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
    Number strings become numbers, whole floats become ints; anything else is a one-line error
    naming the key. Non-scalar fields (lists, dicts) are left to the dataclass."""
    union = typing.get_origin(annotation) in (Union, types.UnionType)
    choices = [a for a in typing.get_args(annotation) if a is not type(None)] if union else [annotation]
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


_KIND_NAMES = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}


def _scalar_type(annotation: Any) -> type:
    """int / float / str / bool of an annotation such as `int`, `bool | None`, `str | None`."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _scalar_type(args[0])
        return str
    if annotation in (int, float, str, bool):
        return annotation
    raise TypeError(f"no flag type for annotation {annotation!r}")


def add_config_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
                     section: str | None = None, only: typing.Iterable[str] | None = None,
                     exclude: typing.Iterable[str] = (), rename: dict[str, str] | None = None,
                     help: dict[str, str] | None = None, show_default: bool = True) -> dict[str, tuple]:
    """Add one flag per field of dataclass `cls` (`only` these, minus `exclude`), named after
    the field (`rename` maps a field to another flag name). Returns {argparse dest: (section,
    field)} for `flag_values`. Values are not validated here: the dataclass does that once, so
    a bad value is the same one-line error from a flag, a YAML file or Python."""
    hints = typing.get_type_hints(cls)
    defaults = cls()
    rename, help = rename or {}, help or {}
    wanted = None if only is None else list(only)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = wanted if wanted is not None else list(fields)
    mapping: dict[str, tuple] = {}
    for name in names:
        if name in exclude or name not in fields:
            continue
        flag_name = rename.get(name, name)
        dest = flag_name.replace("-", "_")
        flag = "--" + flag_name.replace("_", "-")
        kind = _scalar_type(hints[name])
        text = help.get(name, "")
        if show_default:
            default = getattr(defaults, name)
            text = f"{text} (default {default})" if text else f"(default {default})"
        if kind is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, dest=dest, type=kind, default=None, help=text)
        mapping[dest] = (section, name)
    return mapping


def flag_values(args: argparse.Namespace, mapping: dict[str, tuple]) -> dict:
    """The values of flags added by `add_config_flags`: {field: value} for flags without a
    section, {section: {field: value}} for those with one; flags not given are None."""
    out: dict = {}
    for dest, (section, name) in mapping.items():
        value = getattr(args, dest, None)
        if section is None:
            out[name] = value
        else:
            out.setdefault(section, {})[name] = value
    return out
