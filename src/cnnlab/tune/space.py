"""The search space of a study: parameter name -> distribution, read from YAML.

Names are the face train config's field names (a dotted name sets a field inside a section of a
sectioned config). Each distribution checks its own spec, so a bad entry is a one-line error that
names the parameter, and converts itself to optuna's distribution for sampling. The default
space is `cnnlab/tune/space_default.yaml`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import load_yaml
from cnnlab.core.registry import Registry

# Installed beside the package modules (pyproject's package-data); the CLI help names it.
DEFAULT_SPACE_FILE = "space_default.yaml"
# Other spaces installed beside it, by the name `--space` takes.
PACKAGED_SPACES = {"default": DEFAULT_SPACE_FILE, "recipe": "space_recipe.yaml"}

DISTRIBUTIONS = Registry("distribution")


def _number(name: str, spec: dict, key: str, kind: type = float) -> float | int:
    if key not in spec:
        raise CnnlabError(f"search space parameter {name!r}: missing {key!r}")
    value = spec[key]
    # YAML 1.1 reads `1e-4` (no decimal point) as a string; accept what float() accepts.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise CnnlabError(f"search space parameter {name!r}: {key} must be a number, got {spec[key]!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CnnlabError(f"search space parameter {name!r}: {key} must be a finite number, got {spec[key]!r}")
    if kind is int:
        if float(value) != int(value):
            raise CnnlabError(f"search space parameter {name!r}: {key} must be an integer, got {spec[key]!r}")
        return int(value)
    return float(value)


def _check_keys(name: str, spec: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(spec) - set(allowed) - {"type"})
    if unknown:
        raise CnnlabError(f"search space parameter {name!r}: unknown key(s) {', '.join(unknown)}; "
                          f"{spec['type']} takes {', '.join(allowed)}")


@dataclass(frozen=True)
class _FloatRange:
    """Reals between low and high; subclasses say whether uniform in log space."""
    low: float
    high: float
    log: ClassVar[bool] = False

    @classmethod
    def from_spec(cls, name: str, spec: dict) -> _FloatRange:
        _check_keys(name, spec, ("low", "high"))
        low, high = _number(name, spec, "low"), _number(name, spec, "high")
        if not (0 < low <= high if cls.log else low <= high):
            rule = "0 < low <= high" if cls.log else "low <= high"
            raise CnnlabError(f"search space parameter {name!r}: {cls.registry_name} needs {rule}, "
                              f"got low={low}, high={high}")
        return cls(low, high)

    def to_optuna(self) -> BaseDistribution:
        return FloatDistribution(self.low, self.high, log=self.log)

    def to_dict(self) -> dict:
        return {"type": self.registry_name, "low": self.low, "high": self.high}


@DISTRIBUTIONS.register("loguniform")
@dataclass(frozen=True)
class LogUniform(_FloatRange):
    """Positive reals, uniform in log space."""
    log: ClassVar[bool] = True


@DISTRIBUTIONS.register("uniform")
@dataclass(frozen=True)
class Uniform(_FloatRange):
    """Reals, uniform between low and high."""


@DISTRIBUTIONS.register("int")
@dataclass(frozen=True)
class IntRange:
    """Integers low, low+step, ..., high."""
    low: int
    high: int
    step: int = 1

    @classmethod
    def from_spec(cls, name: str, spec: dict) -> IntRange:
        _check_keys(name, spec, ("low", "high", "step"))
        low, high = _number(name, spec, "low", int), _number(name, spec, "high", int)
        step = _number(name, spec, "step", int) if "step" in spec else 1
        if step < 1:
            raise CnnlabError(f"search space parameter {name!r}: int step must be >= 1, got {step}")
        if not low <= high:
            raise CnnlabError(f"search space parameter {name!r}: int needs low <= high, got low={low}, high={high}")
        if (high - low) % step:
            raise CnnlabError(f"search space parameter {name!r}: high - low ({high - low}) "
                              f"must be a multiple of step ({step})")
        return cls(low, high, step)

    def to_optuna(self) -> BaseDistribution:
        return IntDistribution(self.low, self.high, step=self.step)

    def to_dict(self) -> dict:
        return {"type": "int", "low": self.low, "high": self.high, "step": self.step}


@DISTRIBUTIONS.register("categorical")
@dataclass(frozen=True)
class Categorical:
    """One of a list of values (numbers, strings, booleans)."""
    choices: tuple

    @classmethod
    def from_spec(cls, name: str, spec: dict) -> Categorical:
        _check_keys(name, spec, ("choices",))
        choices = spec.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise CnnlabError(f"search space parameter {name!r}: categorical needs a non-empty list of choices, "
                              f"got {choices!r}")
        for c in choices:
            # optuna stores choices in its database; only these types survive the round trip.
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise CnnlabError(f"search space parameter {name!r}: choice {c!r} is not a number, string or boolean")
        if len(set(map(repr, choices))) != len(choices):
            raise CnnlabError(f"search space parameter {name!r}: duplicate choices in {list(choices)}")
        return cls(tuple(choices))

    def to_optuna(self) -> BaseDistribution:
        return CategoricalDistribution(self.choices)

    def to_dict(self) -> dict:
        return {"type": "categorical", "choices": list(self.choices)}


@dataclass(frozen=True)
class SearchSpace:
    """Parameter name -> distribution. Names are the face train config's field names."""
    params: dict[str, Any]

    @classmethod
    def from_dict(cls, data: dict, source: str = "search space") -> SearchSpace:
        if not isinstance(data, dict) or not data:
            raise CnnlabError(f"{source}: a search space is a non-empty mapping of parameter -> distribution")
        params = {}
        for name, spec in data.items():
            if not isinstance(spec, dict) or "type" not in spec:
                raise CnnlabError(f"search space parameter {name!r}: expected a mapping with a 'type' "
                                  f"({', '.join(DISTRIBUTIONS.names())}), got {spec!r}")
            kind = spec["type"]
            if not isinstance(kind, str) or kind not in DISTRIBUTIONS:
                raise CnnlabError(f"search space parameter {name!r}: unknown distribution type {kind!r}; "
                                  f"valid: {', '.join(DISTRIBUTIONS.names())}")
            params[str(name)] = DISTRIBUTIONS.get(kind).from_spec(str(name), spec)
        return cls(params)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        return cls.from_dict(load_yaml(path), source=str(path))

    @classmethod
    def default(cls) -> SearchSpace:
        text = resources.files("cnnlab.tune").joinpath(DEFAULT_SPACE_FILE).read_text()
        return cls.from_dict(yaml.safe_load(text), source=f"cnnlab/{DEFAULT_SPACE_FILE}")

    @classmethod
    def packaged(cls, name: str) -> SearchSpace:
        """A space installed with cnnlab: `recipe` is cnnlab/tune/space_recipe.yaml."""
        if name not in PACKAGED_SPACES:
            raise CnnlabError(f"unknown search space {name!r}; packaged: {', '.join(PACKAGED_SPACES)} "
                              "(or give the path of a YAML file)")
        file = PACKAGED_SPACES[name]
        return cls.from_dict(yaml.safe_load(resources.files("cnnlab.tune").joinpath(file).read_text()),
                             source=f"cnnlab/{file}")

    @classmethod
    def resolve(cls, spec: str | None) -> SearchSpace:
        """`--space`: None (the default space), a packaged name, or a YAML file."""
        if spec is None:
            return cls.default()
        if spec in PACKAGED_SPACES or not (spec.endswith((".yaml", ".yml")) or "/" in spec):
            return cls.packaged(spec)
        return cls.from_yaml(spec)

    @property
    def names(self) -> list[str]:
        return list(self.params)

    def distributions(self) -> dict[str, BaseDistribution]:
        return {name: distribution.to_optuna() for name, distribution in self.params.items()}

    def to_dict(self) -> dict:
        return {name: distribution.to_dict() for name, distribution in self.params.items()}
