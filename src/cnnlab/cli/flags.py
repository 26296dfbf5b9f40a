"""Dataclass configs as command-line flags: the one place where a config becomes flags, for
every CLI. A field `batch_size` is the flag `--batch-size`, typed from its annotation, with the
help text the field declares (`cnnlab.core.config.option`), default None so that "not given" never
overrides a preset or a `--config` file. Values are not validated here: `build_config` does it
once, so a bad value is the same one-line error from a flag, a YAML file or Python."""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Union


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
                     show_default: bool = True) -> dict[str, tuple]:
    """Add one flag per field of dataclass `cls` (`only` these, minus `exclude`), named after
    the field (`rename` maps a field to another flag name). Returns {argparse dest: (section,
    field)} for `flag_values`. Values are not validated here: the dataclass does that once, so
    a bad value is the same one-line error from a flag, a YAML file or Python."""
    hints = typing.get_type_hints(cls)
    defaults = cls()
    rename = rename or {}
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
        text = fields[name].metadata.get("help", "")  # written once, on the field (`config.option`)
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
