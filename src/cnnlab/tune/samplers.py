"""Samplers and pruners of a study, by name (`--sampler`, `--pruner`).

Random search is the default sampler (Bergstra & Bengio 2012, and what the reference did); TPE
(Bergstra et al. 2011) is the option for longer studies; bad trials can be stopped early by
median stopping (Golovin et al. 2017, Google Vizier). Both samplers draw their random
configurations per trial number, so parallel workers sharing a seed propose different ones.
"""
from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from cnnlab.core.errors import CnnlabError
from cnnlab.core.registry import Registry


class TrialSeededRandomSampler(optuna.samplers.BaseSampler):
    """Random search whose draw for a parameter depends only on (seed, trial number, name).

    optuna's RandomSampler keeps one RNG per process: two workers started with the same seed
    would propose the same configurations, and which worker ran which trial would change the
    study. Seeding each draw by the trial number makes trial k's configuration the same
    whichever worker runs it and however many workers there are, and adding a parameter to the
    space leaves the others' values unchanged.
    """

    def __init__(self, seed: int = 0):
        if seed < 0:
            raise CnnlabError(f"seed must be >= 0, got {seed}")
        self.seed = int(seed)

    def infer_relative_search_space(self, study, trial) -> dict:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict:
        return {}

    def sample_independent(self, study, trial, param_name: str, param_distribution: BaseDistribution) -> Any:
        rng = np.random.default_rng([self.seed, trial.number, zlib.crc32(param_name.encode())])
        d = param_distribution
        if isinstance(d, CategoricalDistribution):
            return d.choices[int(rng.integers(len(d.choices)))]
        if isinstance(d, FloatDistribution):
            if d.log:
                return float(min(d.high, math.exp(rng.uniform(math.log(d.low), math.log(d.high)))))
            if d.step is not None:
                return float(d.low + d.step * int(rng.integers(int(round((d.high - d.low) / d.step)) + 1)))
            return float(rng.uniform(d.low, d.high))
        if isinstance(d, IntDistribution):
            if d.log:
                value = int(math.floor(math.exp(rng.uniform(math.log(d.low), math.log(d.high + 1)))))
                return min(d.high, max(d.low, value))
            return int(d.low + d.step * int(rng.integers((d.high - d.low) // d.step + 1)))
        raise TypeError(f"unsupported distribution {d!r} for {param_name!r}")


class _SeededStartupTPE(optuna.samplers.BaseSampler):
    """TPE whose random start-up trials come from `TrialSeededRandomSampler`, so parallel
    workers sharing a seed do not start by proposing identical configurations."""

    def __init__(self, seed: int = 0, n_startup_trials: int = 10):
        self.n_startup_trials = n_startup_trials
        self.random = TrialSeededRandomSampler(seed)
        # constant_liar: running trials count as bad, so parallel workers spread out.
        self.tpe = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials, constant_liar=True)

    def _inner(self, trial) -> optuna.samplers.BaseSampler:
        return self.random if trial.number < self.n_startup_trials else self.tpe

    def infer_relative_search_space(self, study, trial) -> dict:
        return self._inner(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space) -> dict:
        return self._inner(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        return self._inner(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self.tpe.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.tpe.after_trial(study, trial, state, values)


SAMPLERS = Registry("sampler")
SAMPLERS.register("random")(lambda seed: TrialSeededRandomSampler(seed))
SAMPLERS.register("tpe")(lambda seed: _SeededStartupTPE(seed))

PRUNERS = Registry("pruner")
PRUNERS.register("none")(lambda: optuna.pruners.NopPruner())
# Three finished trials are enough for a median on the short CPU studies this tool runs (optuna's
# default of five would never prune a 6-trial demo); step 0 is never pruned because the first
# epoch's score mostly reflects the random head.
PRUNERS.register("median")(lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))


def _lookup(registry: Registry, name: str, flag: str):
    try:
        return registry.get(name)
    except KeyError:
        raise CnnlabError(f"unknown {flag} {name!r}; valid: {', '.join(registry.names())}") from None


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler registered as `name`, seeded; an unknown name is a CnnlabError."""
    return _lookup(SAMPLERS, name, "sampler")(seed)


def make_pruner(name: str | None) -> optuna.pruners.BasePruner:
    """The pruner registered as `name` (None: no pruning); an unknown name is a CnnlabError."""
    return _lookup(PRUNERS, name or "none", "pruner")()
