"""Dataclass configs as command-line flags: the one place where a config becomes flags, for
every CLI. A field `batch_size` is the flag `--batch-size`, typed from its annotation, with the
help text the field declares (`cnnlab.core.config.option`), default None so that "not given" never
overrides a preset or a `--config` file; a `list[str]` field is a flag given once per item. The
fields are read from the catalog (`cnnlab.cli.catalog`), so `--help` imports none of the library.
Values are not validated here: `build_config` does it once, so a bad value is the same one-line
error from a flag, a YAML file or Python."""
from __future__ import annotations

import argparse
import typing

from cnnlab.cli import catalog

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def add_config_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, config: str, *,
                     section: str | None = None, only: typing.Iterable[str] | None = None,
                     exclude: typing.Iterable[str] = (), rename: dict[str, str] | None = None,
                     show_default: bool = True) -> dict[str, tuple]:
    """Add one flag per field of the config dataclass named `config` ("TrainConfig"; `only`
    these, minus `exclude`), named after the field (`rename` maps a field to another flag
    name). Returns {argparse dest: (section, field)} for `flag_values`."""
    rename = rename or {}
    fields = {f["name"]: f for f in catalog.config_fields(config)}
    names = list(fields) if only is None else list(only)
    mapping: dict[str, tuple] = {}
    for name in names:
        if name in exclude or name not in fields:
            continue
        field = fields[name]
        if field["type"] is None:
            raise TypeError(f"no flag type for {config}.{name}")
        flag_name = rename.get(name, name)
        dest = flag_name.replace("-", "_")
        flag = "--" + flag_name.replace("_", "-")
        text = field["help"]  # written once, on the field (`config.option`)
        if show_default:
            text = f"{text} (default {field['default']})" if text else f"(default {field['default']})"
        if field["type"] == "bool":
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif field["type"] == "list":  # a list of strings: the flag once per item
            parser.add_argument(flag, dest=dest, action="append", default=None, metavar=name.upper(), help=text)
        else:
            parser.add_argument(flag, dest=dest, type=_TYPES[field["type"]], default=None, help=text)
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
