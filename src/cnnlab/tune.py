"""Hyperparameter search for the face verifier: an optuna study (Akiba et al. 2019) that many
worker processes or machines share through one RDB storage.

Random search is the default sampler (Bergstra & Bengio 2012, and what the reference did);
TPE (Bergstra et al. 2011) is the option for longer studies; bad trials can be stopped early
by median stopping (Golovin et al. 2017, Google Vizier). The objective is injected: a callable
`objective(params, report) -> score` that trains with `params` on View 1 *train* people and
returns a score on a people-disjoint validation split of them (higher is better, e.g.
validation AUC). It never sees the test pairs: the View 1 test score of the best config is
computed once, after the study (`final_test`), and reported apart from validation.
`FaceTrainer` adapts `cnnlab.tasks.faces.train_view1` to both roles, and `register_tune` adds
the `cnnlab faces tune` command.

Scaling out: every worker runs `run_study` with the same `storage` URL and `study_name`.
`trials` is the TOTAL number of trials the study should hold, across all workers and earlier
runs: each worker claims one trial at a time under a lock kept in the storage itself, so N
workers together run exactly `trials` trials, each trial once, and re-running a finished
command runs nothing and only rewrites the report (a resumed study continues where it stopped).

Outputs in `out_dir`:
    trials.csv, trials.md   every trial (params, state, score, duration, worker, error), best first
    score_vs_params.png     the score against each parameter
    history.png             score per trial and the best so far
    best.yaml               the best trial's params merged into the base train config
    study.yaml              resolved study settings, search space and base config
    environment.json        versions and machine (`cnnlab.env.environment`)
    test.json               after a complete study: the best config's test score (`final_test`)
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import random
import socket
import sys
import time
import traceback
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from cnnlab.io import atomic_write_text, load_yaml, save_yaml, to_plain, write_json
from cnnlab.errors import CnnlabError
from cnnlab.progress import progress_bar
from cnnlab.registry import Registry

Report = Callable[[int, float], None]
Objective = Callable[[dict, Report], float]

DEFAULT_STUDY_NAME = "faces"
# A worker abandons its study after this many trials in a row fail: the cause is then almost
# always the setup (data path, device), not the parameters, and every further trial would
# fail the same way.
MAX_CONSECUTIVE_FAILURES = 5


# ----------------------------------------------------------------------------- search space

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
    def from_spec(cls, name: str, spec: dict) -> "_FloatRange":
        _check_keys(name, spec, ("low", "high"))
        low, high = _number(name, spec, "low"), _number(name, spec, "high")
        if not (0 < low <= high if cls.log else low <= high):
            rule = "0 < low <= high" if cls.log else "low <= high"
            raise CnnlabError(f"search space parameter {name!r}: {cls.registry_name} needs {rule}, got low={low}, high={high}")
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
    def from_spec(cls, name: str, spec: dict) -> "IntRange":
        _check_keys(name, spec, ("low", "high", "step"))
        low, high = _number(name, spec, "low", int), _number(name, spec, "high", int)
        step = _number(name, spec, "step", int) if "step" in spec else 1
        if step < 1:
            raise CnnlabError(f"search space parameter {name!r}: int step must be >= 1, got {step}")
        if not low <= high:
            raise CnnlabError(f"search space parameter {name!r}: int needs low <= high, got low={low}, high={high}")
        if (high - low) % step:
            raise CnnlabError(f"search space parameter {name!r}: high - low ({high - low}) must be a multiple of step ({step})")
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
    def from_spec(cls, name: str, spec: dict) -> "Categorical":
        _check_keys(name, spec, ("choices",))
        choices = spec.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise CnnlabError(f"search space parameter {name!r}: categorical needs a non-empty list of choices, got {choices!r}")
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
    def from_dict(cls, data: dict, source: str = "search space") -> "SearchSpace":
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
    def from_yaml(cls, path: str | Path) -> "SearchSpace":
        return cls.from_dict(load_yaml(path), source=str(path))

    @classmethod
    def default(cls) -> "SearchSpace":
        text = resources.files("cnnlab").joinpath("tune_space.yaml").read_text()
        import yaml
        return cls.from_dict(yaml.safe_load(text), source="cnnlab/tune_space.yaml")

    @property
    def names(self) -> list[str]:
        return list(self.params)

    def distributions(self) -> dict[str, BaseDistribution]:
        return {name: dist.to_optuna() for name, dist in self.params.items()}

    def to_dict(self) -> dict:
        return {name: dist.to_dict() for name, dist in self.params.items()}


# ----------------------------------------------------------------------------- samplers, pruners

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


# ----------------------------------------------------------------------------- storage, lock

def default_storage(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'study.db'}"


def _open_storage(url: str) -> optuna.storages.BaseStorage:
    engine_kwargs = {}
    if url.startswith("sqlite"):
        # Several processes write one SQLite file: wait for its lock instead of failing at once.
        engine_kwargs = {"connect_args": {"timeout": 60}}
        _prepare_sqlite(url)
    last: Exception | None = None
    # Workers started together race to create the schema of a new database; the losers see
    # "table already exists" or a locked file and simply retry.
    for attempt in range(8):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except ImportError as exc:
            raise CnnlabError(f"storage {redact(url)} needs a database driver: {exc}") from None
        except Exception as exc:  # sqlalchemy errors differ per backend
            last = exc
            time.sleep(0.05 + random.random() * 0.2 * (attempt + 1))
    raise CnnlabError(f"cannot open storage {redact(url)}: {str(last).splitlines()[0] if last else ''}")


def _prepare_sqlite(url: str) -> None:
    """Create the folder of a SQLite file and switch it to write-ahead logging: readers no
    longer block the writer, and a commit costs one sync instead of three (a 6-trial study
    ran 4x faster here). WAL needs a local disk, which is where SQLite studies belong anyway."""
    import sqlite3
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:":
        return
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=60)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        pass  # WAL is persistent: another worker switching it at the same moment is enough


def redact(url: str) -> str:
    """The storage URL without its password, for logs and study.yaml."""
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


class StudyLock:
    """Mutual exclusion between workers, kept in the optuna storage itself.

    Creating a study is atomic (study names are unique in every RDB backend), so the worker
    that creates `<study>:lock` holds the lock and deleting it releases it. It is held for the
    few milliseconds it takes to count the trials and create the next one. A holder that died
    inside that window would leave the lock behind; a worker that has waited `stale_after`
    seconds therefore removes it.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, study_name: str, stale_after: float = 60.0):
        self.storage = storage
        self.name = f"{study_name}:lock"
        self.stale_after = stale_after

    def __enter__(self) -> "StudyLock":
        waited_since = time.monotonic()
        while True:
            try:
                self.storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], self.name)
                return self
            except optuna.exceptions.DuplicatedStudyError:
                pass
            except optuna.exceptions.StorageInternalError:
                pass  # a busy database: try again
            if time.monotonic() - waited_since > self.stale_after:
                self._remove()
                waited_since = time.monotonic()
            time.sleep(0.005 + random.random() * 0.05)

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        for _ in range(20):
            try:
                self.storage.delete_study(self.storage.get_study_id_from_name(self.name))
                return
            except KeyError:
                return
            except optuna.exceptions.StorageInternalError:
                time.sleep(0.05)


# ----------------------------------------------------------------------------- the study

@dataclass
class StudyResult:
    study_name: str
    storage: str                    # password removed
    metric: str
    best_params: dict | None        # None when no trial completed
    best_value: float | None
    best_trial: int | None
    counts: dict[str, int]          # trials per state, whole study
    ran_here: list[int]             # trial numbers this worker ran
    rows: list[dict]                # the trials table, best first
    out_dir: Path
    best_config: dict | None = None  # base config with the best params: what best.yaml holds
    complete: bool = False           # the study holds all its trials, none still running
    files: dict[str, Path] = field(default_factory=dict)


def trial_config(base_config: dict | None, params: dict) -> dict:
    """The train config mapping of a trial: `base_config` with the trial's params set.
    A dotted name (`train.lr`) sets a field inside a section, for sectioned config files."""
    config = json.loads(json.dumps(to_plain(base_config or {})))  # a deep copy of plain data
    for name, value in params.items():
        *sections, leaf = name.split(".")
        node = config
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise CnnlabError(f"parameter {name!r}: base config {section!r} is not a section")
        node[leaf] = value
    return config


def _leaf_paths(mapping: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        paths.extend(_leaf_paths(value, f"{path}.") if isinstance(value, dict) else [path])
    return paths


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _counted(trial: FrozenTrial) -> bool:
    """Trials that use up the `trials` budget: all but those whose worker died or was
    interrupted (`abandoned`), which a rerun replaces."""
    return not trial.user_attrs.get("abandoned", False)


def _fail_dead_local_trials(study: optuna.Study) -> None:
    """A RUNNING trial of a process on this host that no longer exists can never finish:
    mark it failed and abandoned, so the study is not stuck and a rerun replaces it."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get("worker", ""))
        name, _, pid = worker.rpartition(":")
        if name != host or not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        try:
            # optuna has no public setter for another process's trial attributes.
            study._storage.set_trial_user_attr(trial._trial_id, "abandoned", True)
            study._storage.set_trial_user_attr(trial._trial_id, "error", f"worker {worker} died during the trial")
            study.tell(trial.number, state=TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError):
            pass  # it finished after all


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim(study: optuna.Study, lock: StudyLock, space: SearchSpace, total: int) -> optuna.Trial | None:
    """The next trial of the study, or None when it already holds `total` counted trials."""
    with lock:
        _fail_dead_local_trials(study)
        held = sum(_counted(t) for t in study.get_trials(deepcopy=False))
        if held >= total:
            return None
        trial = study.ask(space.distributions())
        trial.set_user_attr("worker", worker_id())
        return trial


class TrialReporter:
    """The `report` an objective receives: `report(step, value)` records an intermediate
    validation score and raises `optuna.TrialPruned` when the pruner stops the trial.
    `report.number` is the trial number (e.g. to name the trial's run directory)."""

    def __init__(self, trial: optuna.Trial):
        self._trial = trial
        self.number = trial.number

    def __call__(self, step: int, value: float) -> None:
        self._trial.report(float(value), int(step))
        if self._trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} with value {value:.4g}")


def _run_trial(study: optuna.Study, trial: optuna.Trial, objective: Objective) -> tuple[TrialState, str]:
    """Run one trial and tell the study its outcome: (state, error message or "")."""
    report = TrialReporter(trial)
    try:
        value = objective(dict(trial.params), report)
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"objective returned a non-finite score {value}")
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED, ""
    except KeyboardInterrupt:
        trial.set_user_attr("error", "interrupted")
        trial.set_user_attr("abandoned", True)
        study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        trial.set_user_attr("error", message)
        # Workers may run on other machines: keep the traceback where every worker can read it.
        trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
        study.tell(trial, state=TrialState.FAIL)
        print(f"cnnlab tune: trial {trial.number} failed: {message}", file=sys.stderr)
        return TrialState.FAIL, message
    study.tell(trial, value)
    return TrialState.COMPLETE, ""


def run_study(objective: Objective, space: SearchSpace, *, trials: int, out_dir: str | Path,
              storage: str | None = None, study_name: str | None = None, sampler: str = "random",
              seed: int = 0, pruner: str | None = None, metric: str = "validation score",
              base_config: dict | None = None, progress: bool | None = None,
              max_consecutive_failures: int = MAX_CONSECUTIVE_FAILURES,
              environment_device: Any = None, plots: bool = True, write_files: bool = True) -> StudyResult:
    """Run trials of a shared study until it holds `trials` trials, then write the report.

    objective(params, report) -> score (maximised); `report(step, value)` records an
    intermediate score and raises `optuna.TrialPruned` when the pruner stops the trial.
    An exception in the objective fails that trial (message kept) and the study goes on.
    `storage` None means `sqlite:///<out_dir>/study.db`; the same storage and study name on
    several processes or machines share the study. `base_config` holds the train config
    fields every trial shares; best.yaml is base_config updated with the best params.
    `write_files=False` skips the report files (a worker of a large fleet); the result still
    holds the trials table and best params.
    """
    if trials < 0:
        raise CnnlabError(f"trials must be >= 0, got {trials}")
    if max_consecutive_failures < 1:
        raise CnnlabError(f"max_consecutive_failures must be >= 1, got {max_consecutive_failures}")
    clash = sorted(set(_leaf_paths(base_config or {})) & set(space.names))
    if clash:
        raise CnnlabError(f"base config fixes {', '.join(clash)}, which the search space also tunes")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study_name = study_name or DEFAULT_STUDY_NAME
    storage_url = storage or default_storage(out_dir)
    make_sampler = _lookup(SAMPLERS, sampler, "sampler")
    make_pruner = _lookup(PRUNERS, pruner or "none", "pruner")

    with _quiet_optuna():
        rdb = _open_storage(storage_url)
        study = _create_or_load(rdb, study_name, make_sampler(seed), make_pruner())
        _check_same_setup(study, space, base_config)
        lock = StudyLock(rdb, study_name)
        ran_here: list[int] = []
        failures_in_row, stop_reason, interrupted = 0, "", False
        bar = progress_bar(enable=progress, total=trials, initial=min(_finished(study), trials),
                           desc=f"study {study_name}", unit="trial")
        try:
            while True:
                trial = _claim(study, lock, space, trials)
                if trial is None:
                    break
                state, error = _run_trial(study, trial, objective)
                ran_here.append(trial.number)
                failures_in_row = failures_in_row + 1 if state == TrialState.FAIL else 0
                bar.n = min(_finished(study), trials)
                best = _best(study)
                if best is not None:
                    bar.set_postfix_str(f"best {best.value:.4f} (trial {best.number})")
                bar.refresh()
                if failures_in_row >= max_consecutive_failures:
                    stop_reason = (f"{failures_in_row} trials in a row failed, stopping this worker; last error: "
                                   f"{error} (all errors in {out_dir / 'trials.md'})")
                    break
        except KeyboardInterrupt:
            interrupted = True  # the finished trials are in the storage; still write their report
        finally:
            bar.close()
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if running and not interrupted:
            print(f"cnnlab tune: {running} trial(s) still running in other workers; run the same command "
                  f"again after they finish to refresh the report", file=sys.stderr)
        result = write_report(study, space, out_dir, metric=metric, base_config=base_config,
                              settings=_settings(trials, storage_url, study_name, sampler, seed, pruner, metric),
                              environment_device=environment_device, plots=plots, write_files=write_files)
        result.ran_here = ran_here
        if interrupted:
            raise KeyboardInterrupt
        if stop_reason:
            raise CnnlabError(stop_reason)
        return result


@contextlib.contextmanager
def _quiet_optuna():
    """optuna logs every trial and study creation at INFO; the progress bar and the trials
    table replace that, and lock/marker studies are bookkeeping nobody needs to read."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _settings(trials, storage_url, study_name, sampler, seed, pruner, metric) -> dict:
    return {"trials": trials, "storage": redact(storage_url), "study_name": study_name, "sampler": sampler,
            "seed": seed, "pruner": pruner or "none", "direction": "maximize", "metric": metric}


def _create_or_load(rdb, study_name: str, sampler, pruner) -> optuna.Study:
    for attempt in range(8):
        try:
            return optuna.create_study(storage=rdb, study_name=study_name, sampler=sampler, pruner=pruner,
                                       direction="maximize", load_if_exists=True)
        except optuna.exceptions.DuplicatedStudyError:
            # Another worker created it between our lookup and our insert.
            time.sleep(0.05 + random.random() * 0.1)
        except optuna.exceptions.StorageInternalError:
            time.sleep(0.05 + random.random() * 0.2 * (attempt + 1))
    raise CnnlabError(f"cannot create or load study {study_name!r}")


def _check_same_setup(study: optuna.Study, space: SearchSpace, base_config: dict | None) -> None:
    """Workers of one study must search one space with one base recipe, or their trials are
    not comparable; the first worker records both in the study, the others must match."""
    for key, mine, what in (("search_space", space.to_dict(), "search space (--space)"),
                            ("base_config", to_plain(base_config or {}), "base train config")):
        stored = study.user_attrs.get(key)
        if stored is None:
            study.set_user_attr(key, mine)
        elif json.dumps(stored, sort_keys=True) != json.dumps(to_plain(mine), sort_keys=True):
            diff = sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k))
            raise CnnlabError(f"study {study.study_name!r} was started with a different {what} "
                              f"(differs in {', '.join(diff)}); use the same settings or another --study name")


def _finished(study: optuna.Study) -> int:
    return sum(t.state.is_finished() and _counted(t) for t in study.get_trials(deepcopy=False))


def _best(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


# ----------------------------------------------------------------------------- report

_STATE_ORDER = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.FAIL: 2,
                TrialState.RUNNING: 3, TrialState.WAITING: 4}


def trial_rows(study: optuna.Study, space: SearchSpace) -> list[dict]:
    """One row per trial: best completed first, then pruned (by their last score), failed,
    running; ties by trial number."""
    trials = study.get_trials(deepcopy=False)

    def order(t: FrozenTrial):
        score = t.value if t.value is not None else -math.inf
        return (_STATE_ORDER.get(t.state, 5), -score, t.number)

    rows = []
    for t in sorted(trials, key=order):
        duration = t.duration.total_seconds() if t.duration is not None else None
        row = {"trial": t.number, "state": t.state.name.lower(), "score": t.value}
        row.update({name: t.params.get(name) for name in space.names})
        row.update({"steps": len(t.intermediate_values),
                     "duration_s": round(duration, 2) if duration is not None else None,
                     "worker": t.user_attrs.get("worker", ""), "error": t.user_attrs.get("error", "")})
        rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def rows_to_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


_TEXT_COLUMNS = ("state", "worker", "error")


def rows_to_markdown(rows: list[dict], metric: str) -> str:
    if not rows:
        return "(no trials)\n"
    columns = list(rows[0])
    header = [metric if c == "score" else c for c in columns]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" if c in _TEXT_COLUMNS else "---:" for c in columns) + " |"]
    for row in rows:
        cells = [_fmt(row[c]).replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(study: optuna.Study, space: SearchSpace, out_dir: str | Path, *, metric: str,
                 base_config: dict | None, settings: dict, environment_device: Any = None,
                 plots: bool = True, write_files: bool = True) -> StudyResult:
    """Write the trials table, plots, best.yaml, study.yaml and environment.json for the
    whole study as the storage holds it now (trials of every worker). `write_files=False`
    only builds the result."""
    out_dir = Path(out_dir)
    rows = trial_rows(study, space)
    counts = {s.name.lower(): 0 for s in _STATE_ORDER}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    best = _best(study)
    best_params = None if best is None else {name: best.params[name] for name in space.names if name in best.params}
    result = StudyResult(study_name=study.study_name, storage=settings.get("storage", ""), metric=metric,
                         best_params=best_params, best_value=best.value if best else None,
                         best_trial=best.number if best else None, counts=counts, ran_here=[], rows=rows,
                         out_dir=out_dir, best_config=trial_config(base_config, best_params) if best else None,
                         complete=(_finished(study) >= settings.get("trials", 0) and not counts["running"]))
    if not write_files:
        return result
    written = result.files
    atomic_write_text(out_dir / "trials.csv", rows_to_csv(rows))
    written["trials.csv"] = out_dir / "trials.csv"
    summary = (f"# Study `{study.study_name}`\n\n{len(rows)} trials: "
               + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
               + (f". Best: trial {best.number}, {metric} {best.value:.4f}.\n\n" if best else ". No trial completed.\n\n"))
    atomic_write_text(out_dir / "trials.md", summary + rows_to_markdown(rows, metric))
    written["trials.md"] = out_dir / "trials.md"

    if best is not None:
        # Same names as the face train config, so `cnnlab faces train --config best.yaml` reads it.
        save_yaml(result.best_config, out_dir / "best.yaml")
        written["best.yaml"] = out_dir / "best.yaml"

    save_yaml({"study": settings, "search_space": space.to_dict(), "base_config": base_config or {},
               "best": {"trial": best.number, "value": best.value, "params": best_params} if best else None},
              out_dir / "study.yaml")
    written["study.yaml"] = out_dir / "study.yaml"
    from cnnlab.env import environment
    write_json(out_dir / "environment.json", environment(environment_device))
    written["environment.json"] = out_dir / "environment.json"

    if plots:
        written["score_vs_params.png"] = plot_score_vs_params(study, space, out_dir / "score_vs_params.png", metric)
        written["history.png"] = plot_history(study, out_dir / "history.png", metric)
    return result


# ----------------------------------------------------------------------------- plots

def _scored(study: optuna.Study) -> tuple[list[FrozenTrial], list[FrozenTrial]]:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.value is not None]
    return complete, pruned


def plot_score_vs_params(study: optuna.Study, space: SearchSpace, path: str | Path, metric: str) -> Path:
    """One panel per parameter: completed trials as dots, pruned trials (their last reported
    score) as grey crosses, the best trial as a red star. Categorical and small integer
    parameters are jittered sideways so trials that drew the same value stay visible."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from cnnlab.plots.common import new_figure, save_figure

    complete, pruned = _scored(study)
    best = _best(study)
    names = space.names
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = new_figure(4.0 * ncols, 3.2 * nrows, nrows, ncols)
    axes = np.atleast_1d(axes).ravel()
    jitter = np.random.default_rng(0)
    for ax, name in zip(axes, names):
        dist = space.params[name]
        scored = [t for t in complete + pruned if name in t.params]
        if isinstance(dist, Categorical):
            index = {repr(c): i for i, c in enumerate(dist.choices)}
            x = {t.number: index[repr(t.params[name])] + jitter.uniform(-0.12, 0.12) for t in scored}
        elif isinstance(dist, IntRange):
            x = {t.number: t.params[name] + jitter.uniform(-0.06, 0.06) * dist.step for t in scored}
        else:
            x = {t.number: float(t.params[name]) for t in scored}

        def draw(trials, **style):
            trials = [t for t in trials if t.number in x]
            if trials:
                ax.scatter([x[t.number] for t in trials], [t.value for t in trials], **style)

        draw(pruned, marker="x", color="0.6", label="pruned (last score)")
        draw(complete, color="tab:blue", alpha=0.8, label="complete")
        if best is not None:
            draw([best], marker="*", s=200, color="tab:red", zorder=3, label="best")
        if isinstance(dist, Categorical):
            ax.set_xticks(range(len(dist.choices)), [str(c) for c in dist.choices])
            ax.set_xlim(-0.5, len(dist.choices) - 0.5)
        elif isinstance(dist, LogUniform):
            ax.set_xscale("log")
            # Within two decades label 1-2-5 steps, beyond only the powers of ten; minor ticks
            # unlabelled either way (their 2x10^-3 labels run into each other).
            decades = math.log10(dist.high / dist.low) if dist.low < dist.high else 0
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5) if decades <= 2 else (1,)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        if isinstance(dist, (LogUniform, Uniform, IntRange)) and dist.low < dist.high:
            pad = 0.0 if isinstance(dist, LogUniform) else 0.06 * (dist.high - dist.low)
            ax.set_xlim(dist.low - pad, dist.high + pad)
        if isinstance(dist, IntRange) and (dist.high - dist.low) // dist.step <= 10:
            ax.set_xticks(range(dist.low, dist.high + 1, dist.step))
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    if complete or pruned:
        axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(f"Study {study.study_name}: {metric} against each parameter")
    return save_figure(fig, path)


def plot_history(study: optuna.Study, path: str | Path, metric: str) -> Path:
    """Score of each trial in trial order and the best score so far."""
    from cnnlab.plots.common import new_figure, save_figure

    complete, pruned = _scored(study)
    fig, ax = new_figure(7.0, 4.0)
    if pruned:
        ax.scatter([t.number for t in pruned], [t.value for t in pruned], marker="x", color="0.6", label="pruned (last score)")
    if complete:
        complete = sorted(complete, key=lambda t: t.number)
        numbers = [t.number for t in complete]
        values = [t.value for t in complete]
        ax.scatter(numbers, values, color="tab:blue", label="complete")
        last = max(t.number for t in study.get_trials(deepcopy=False))
        running_best = np.maximum.accumulate(values)
        # Extend the best-so-far line to the last trial so pruned and failed tails show as flat.
        ax.step(numbers + [last], np.append(running_best, running_best[-1]), where="post",
                color="tab:red", label="best so far")
        ax.legend(fontsize=9, loc="lower right")
    failed = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))]
    if failed:
        ax.set_title(f"optimisation history ({len(failed)} failed trial(s) not shown)")
    else:
        ax.set_title("optimisation history")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- the test score, once

TestBest = Callable[[dict, Path], dict]  # (best train config, run dir) -> test metrics


def final_test(result: StudyResult, storage: str, test_best: TestBest, *, retest: bool = False) -> dict | None:
    """Score the best configuration on the test split once per study, after tuning.

    Runs only when the study is complete. The outcome is kept in the study's storage, so every
    worker and every rerun reports the same test numbers instead of computing new ones (which
    would turn the test split into a second validation set); a marker study makes sure only
    one of several workers finishing together computes it. Returns {"trial", "validation",
    "test"} or None when there is nothing (yet) to report.
    """
    if result.best_trial is None or result.best_config is None or not result.complete:
        return None
    with _quiet_optuna():
        return _final_test(result, storage, test_best, retest)


def _final_test(result: StudyResult, storage: str, test_best: TestBest, retest: bool) -> dict | None:
    rdb = _open_storage(storage)
    study = optuna.load_study(study_name=result.study_name, storage=rdb)
    key = f"test_of_trial_{result.best_trial}"
    marker = f"{result.study_name}:{key}"
    record = study.user_attrs.get(key)
    if record is None or retest:
        if retest:
            with contextlib.suppress(KeyError):
                rdb.delete_study(rdb.get_study_id_from_name(marker))
        try:
            rdb.create_new_study([optuna.study.StudyDirection.MINIMIZE], marker)
        except optuna.exceptions.DuplicatedStudyError:
            print(f"cnnlab tune: another worker computes the test score of trial {result.best_trial}; "
                  f"if none does any more, rerun with --retest", file=sys.stderr)
            return None
        try:
            metrics = test_best(dict(result.best_config), result.out_dir / f"test-trial-{result.best_trial}")
        except BaseException:
            # Let a later run try again.
            with contextlib.suppress(KeyError):
                rdb.delete_study(rdb.get_study_id_from_name(marker))
            raise
        record = {"trial": result.best_trial, "validation": {result.metric: result.best_value},
                  "test": to_plain(metrics)}
        study.set_user_attr(key, record)
    write_json(result.out_dir / "test.json", record)
    result.files["test.json"] = result.out_dir / "test.json"
    return record


# ----------------------------------------------------------------------------- `cnnlab faces tune`

# Where a run happens, not what it is: kept out of best.yaml and of the recipe workers must share.
_RUN_FIELDS = ("device", "progress")


class FaceTrainer:
    """The face trainer (`cnnlab.tasks.faces.train_view1`) as the study's objective and as the
    once-only test of the best configuration.

    A trial trains on View 1's DevTrain people minus a seeded validation split and returns the
    validation AUC of its selected epoch, reporting it after every epoch for the pruner; it is
    called with `evaluate_test=False`, so the DevTest pairs are never read while tuning. Trial
    run directories keep their metrics and config; their weights are deleted (the best
    configuration is retrained for the test, and trials may run on other machines anyway).
    """
    metric = "validation AUC"

    def __init__(self, base_config: dict, data_root: str | Path, out_dir: str | Path, *,
                 device: str = "auto", progress: bool | None = None):
        self.base_config = base_config
        self.data_root = Path(data_root)
        self.out_dir = Path(out_dir)
        self.run_options = {"device": device, "progress": progress}

    def _config(self, mapping: dict):
        from cnnlab.config import build_config
        from cnnlab.tasks.faces import FaceTrainConfig
        return build_config(FaceTrainConfig, mapping, self.run_options)

    def objective(self, params: dict, report: Report) -> float:
        from cnnlab.tasks.faces import train_view1
        config = self._config(trial_config(self.base_config, params))
        run_dir = self.out_dir / "trials" / f"trial-{getattr(report, 'number', 0):04d}"
        with _RunLog(run_dir / "log.txt") as log:
            try:
                metrics = train_view1(config, self.data_root, run_dir, evaluate_test=False, report=report,
                                      plots=False, log=log)
            finally:
                for name in ("checkpoint.pt", "model.pt"):
                    (run_dir / name).unlink(missing_ok=True)
        return float(metrics["validation"]["auc"])

    def test_best(self, config: dict, run_dir: Path) -> dict:
        from cnnlab.tasks.faces import train_view1
        with _RunLog(Path(run_dir) / "log.txt", echo=True) as log:
            metrics = train_view1(self._config(config), self.data_root, run_dir, evaluate_test=True, log=log)
        return {**metrics["test"], "run_dir": str(run_dir)}


class _RunLog:
    """A trainer's `log` callable writing to a file (the study's progress bar owns the
    terminal), optionally echoed."""

    def __init__(self, path: Path, echo: bool = False):
        self.path, self.echo = path, echo

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")
        return self

    def __call__(self, message: str) -> None:
        self._file.write(message + "\n")
        self._file.flush()
        if self.echo:
            print(message)

    def __exit__(self, *exc) -> None:
        self._file.close()


def register_tune(faces_sub) -> None:
    """Add `tune` to the `cnnlab faces` subcommands. The recipe flags are those of
    `cnnlab faces train` (every FaceTrainConfig field, --preset, --config)."""
    from cnnlab.cli.faces import add_config_flags

    p = faces_sub.add_parser(
        "tune", help="search the training recipe with optuna on View 1 training people only",
        description="Each trial trains on View 1 training people and is scored (validation AUC) on a "
                    "people-disjoint validation split of them; the DevTest pairs are read once, after the "
                    "study, to score the best configuration. Workers started with the same --storage and "
                    "--study share the study; --trials is the total over all of them. --seed seeds the "
                    "sampler (the same seed proposes the same configurations) as well as every trial's "
                    "training and validation split.")
    g = p.add_argument_group("study")
    g.add_argument("--trials", type=int, default=20,
                   help="total number of trials in the study, all workers together (default 20)")
    g.add_argument("--storage", metavar="URL",
                   help="optuna storage the workers share: sqlite:///FILE.db (one machine) or "
                        "postgresql://user:pass@host/db, mysql://... (many); default sqlite:///OUT/study.db")
    g.add_argument("--study", default=DEFAULT_STUDY_NAME, metavar="NAME",
                   help=f"study name in the storage (default {DEFAULT_STUDY_NAME})")
    g.add_argument("--sampler", choices=SAMPLERS.names(), default="random", help="random (default) or tpe")
    g.add_argument("--pruner", choices=PRUNERS.names(), default="none",
                   help="median: stop a trial whose validation AUC is below the median at the same epoch")
    g.add_argument("--space", metavar="FILE", help="search space YAML (default: cnnlab/tune_space.yaml)")
    g.add_argument("--out", default="runs/faces-tune", metavar="DIR", help="report folder (default runs/faces-tune)")
    g.add_argument("--data", metavar="DIR", help="LFW folder with the protocol files (default: $CNNLAB_DATA/lfw)")
    g.add_argument("--no-test", dest="test", action="store_false",
                   help="do not score the best configuration on the View 1 DevTest pairs after the study")
    g.add_argument("--retest", action="store_true", help="score the best configuration on DevTest again")
    add_config_flags(p)
    p.set_defaults(func=run_tune)


def _base_config(args, space: SearchSpace) -> dict:
    """The recipe every trial shares: --preset, then --config, then flags, minus the tuned
    fields and where-to-run fields. Setting a tuned field explicitly is an error, not a silent
    override of the search."""
    import dataclasses
    from cnnlab.cli.faces import config_from_args
    from cnnlab.tasks.faces import FaceTrainConfig

    fields = [f.name for f in dataclasses.fields(FaceTrainConfig)]
    unknown = [n for n in space.names if n not in fields]
    if unknown:
        raise CnnlabError(f"search space parameter {unknown[0]!r} is not a face train config field; "
                          f"valid: {', '.join(fields)}")
    explicit = {k for k in fields if getattr(args, k, None) is not None}
    if args.config:
        explicit |= set(load_yaml(args.config))
    fixed = sorted(explicit & set(space.names))
    if fixed:
        raise CnnlabError(f"{', '.join(fixed)} set by a flag or --config but tuned by the search space; "
                          f"drop the setting or remove it from the space (--space)")
    resolved = to_plain(config_from_args(args))
    return {k: v for k, v in resolved.items() if k not in space.names and k not in _RUN_FIELDS}


def run_tune(args) -> int:
    from cnnlab.cli.faces import data_root_from_args

    space = SearchSpace.from_yaml(args.space) if args.space else SearchSpace.default()
    base = _base_config(args, space)
    out_dir = Path(args.out)
    trainer = FaceTrainer(base, data_root_from_args(args), out_dir, device=args.device or "auto", progress=args.progress)
    storage = args.storage or default_storage(out_dir)
    result = run_study(trainer.objective, space, trials=args.trials, out_dir=out_dir, storage=storage,
                       study_name=args.study, sampler=args.sampler, seed=base["seed"], pruner=args.pruner,
                       metric=trainer.metric, base_config=base, progress=args.progress,
                       environment_device=_resolved_device(args.device))
    print(f"study {result.study_name}: " + ", ".join(f"{n} {s}" for s, n in result.counts.items() if n)
          + f"; table {out_dir / 'trials.md'}")
    if result.best_params is None:
        raise CnnlabError(f"no trial completed; the errors are in {out_dir / 'trials.md'}")
    print(f"best: trial {result.best_trial}, {result.metric} {result.best_value:.4f}; config {out_dir / 'best.yaml'}")
    if args.test and result.complete:
        record = final_test(result, storage, trainer.test_best, retest=args.retest)
        if record is not None:
            test = record["test"]
            print(f"View 1 DevTest, scored once after tuning (not used to choose): "
                  f"AUC {test['auc']:.4f}, accuracy {test['accuracy']:.2%} at the validation threshold; "
                  f"{out_dir / 'test.json'}")
    elif args.test:
        print("the DevTest score is computed once the study is complete: run the command again after the "
              "other workers finish")
    return 0


def _resolved_device(name: str | None):
    from cnnlab.env import resolve_device
    return resolve_device(name or "auto")
