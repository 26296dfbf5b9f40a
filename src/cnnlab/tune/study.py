"""Running a study that many worker processes or machines share through one RDB storage, and
scoring its best configuration on the test split once, afterwards.

Every worker runs `run_study` with the same `storage` URL and `study_name`. `trials` is the
TOTAL number of trials the study should hold, across all workers and earlier runs: each worker
claims one trial at a time under a lock kept in the storage itself, so N workers together run
exactly `trials` trials, each trial once, and re-running a finished command runs nothing and
only rewrites the study summary (a resumed study continues where it stopped). A trial whose worker
died, or that was interrupted, does not count: its parameters run again (`recovery`).

Nothing here prints: messages for the user go to the `log` callable the caller passes (the CLI
prints them); without one they go to the `cnnlab.tune` logger as warnings.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import to_plain, write_json
from cnnlab.core.progress import progress_bar
from cnnlab.tune.recovery import SCRATCH, abandon_interrupted, recover_dead_trials
from cnnlab.tune.results import StudyResult, best_trial, counted, finished_count, summarize_study
from cnnlab.tune.samplers import make_pruner, make_sampler
from cnnlab.tune.space import SearchSpace
from cnnlab.tune.storage import (
    HEARTBEAT,
    HEARTBEAT_INTERVAL,
    STALE_AFTER,
    Heartbeat,
    StudyLock,
    default_storage,
    open_storage,
    redact,
    worker_id,
)
from cnnlab.tune.summary import write_study_summary

# report_epoch(epoch, score): records a validation score; may raise optuna.TrialPruned.
ReportEpoch = Callable[[int, float], None]
Objective = Callable[[dict, ReportEpoch], float]
TestBest = Callable[[dict, Path], dict]  # (best train config, run dir) -> test metrics
Log = Callable[[str], None]

DEFAULT_STUDY_NAME = "faces"
# A worker abandons its study after this many trials in a row fail: the cause is then almost
# always the setup (data path, device), not the parameters, and every further trial would
# fail the same way.
MAX_CONSECUTIVE_FAILURES = 5

_logger = logging.getLogger("cnnlab.tune")


def _leaf_paths(mapping: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        paths.extend(_leaf_paths(value, f"{path}.") if isinstance(value, dict) else [path])
    return paths


def _claim(study: optuna.Study, lock: StudyLock, space: SearchSpace, total: int, log: Log,
           stale_after: float = STALE_AFTER) -> optuna.Trial | None:
    """The next trial of the study, or None when it already holds `total` counted trials
    (finished or running). A queued re-run of an abandoned trial's parameters (`recovery`)
    is taken first: it replaces the abandoned trial, so it is not yet among the held ones."""
    with lock:
        for message in recover_dead_trials(study, stale_after):
            log(message)
        held = sum(counted(study, t) and t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))
        if held >= total:
            return None
        trial = study.ask(space.distributions())
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr(HEARTBEAT, time.time())
        return trial


class TrialPruning:
    """The `report_epoch` an objective receives: `report_epoch(step, value)` records an
    intermediate validation score in the trial and raises `optuna.TrialPruned` when the pruner
    stops the trial. `.number` is the trial number (e.g. to name the trial's run directory),
    and `.scratch(paths)` names files the trial deletes when it ends (weights)."""

    def __init__(self, trial: optuna.Trial):
        self._trial = trial
        self.number = trial.number

    def scratch(self, *paths: str | Path) -> None:
        """Files the objective writes for itself and deletes when it ends (checkpoints, weights).
        Recorded in the storage: when its worker dies mid-trial, the worker on the same host
        that finds it dead deletes them."""
        self._trial.set_user_attr(SCRATCH, [str(Path(p).resolve()) for p in paths])

    def __call__(self, step: int, value: float) -> None:
        self._trial.report(float(value), int(step))
        if self._trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} with value {value:.4g}")


def _run_trial(study: optuna.Study, trial: optuna.Trial, objective: Objective, log: Log,
               heartbeat_interval: float = HEARTBEAT_INTERVAL) -> tuple[TrialState, str]:
    """Run one trial and tell the study its outcome: (state, error message or "")."""
    report_epoch = TrialPruning(trial)
    try:
        with Heartbeat(trial, heartbeat_interval):
            value = objective(dict(trial.params), report_epoch)
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"objective returned a non-finite score {value}")
    except optuna.TrialPruned:
        return _tell(study, trial, log, state=TrialState.PRUNED)
    except KeyboardInterrupt:
        abandon_interrupted(study, trial)
        raise
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            trial.set_user_attr("error", message)
            # Workers may run on other machines: keep the traceback where every worker can read it.
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
        state, given_up = _tell(study, trial, log, state=TrialState.FAIL)
        if not given_up:
            log(f"trial {trial.number} failed: {message}")
        return state, given_up or message
    return _tell(study, trial, log, values=value)


def _tell(study: optuna.Study, trial: optuna.Trial, log: Log, **outcome) -> tuple[TrialState, str]:
    """Tell the study; (state told, "") or, when another worker had already given the trial up
    (no heartbeat for too long: this machine was unreachable or suspended, and the trial's
    parameters were queued again there), (FAIL, why) and the outcome is dropped."""
    try:
        now = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        if now.state != TrialState.RUNNING:
            raise optuna.exceptions.UpdateFinishedTrialError
        study.tell(trial, **outcome)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):  # ValueError: "Cannot tell a FAIL trial"
        log(f"trial {trial.number} ended after another worker had given it up (no heartbeat); "
            "its parameters run again there, this outcome is dropped")
        return TrialState.FAIL, "given up by another worker"
    return outcome.get("state", TrialState.COMPLETE), ""


def run_study(objective: Objective, space: SearchSpace, *, trials: int, out_dir: str | Path,
              storage: str | None = None, study_name: str | None = None, sampler: str = "random",
              seed: int = 0, pruner: str | None = None, metric: str = "validation score",
              base_config: dict | None = None, progress: bool | None = None,
              max_consecutive_failures: int = MAX_CONSECUTIVE_FAILURES,
              environment_device: Any = None, plots: bool = True, write_files: bool = True,
              log: Log | None = None, heartbeat_interval: float = HEARTBEAT_INTERVAL,
              stale_after: float = STALE_AFTER) -> StudyResult:
    """Run trials of a shared study until it holds `trials` trials, then write the study summary.

    objective(params, report_epoch) -> score (maximised); `report_epoch(step, value)` records an
    intermediate score and raises `optuna.TrialPruned` when the pruner stops the trial.
    An exception in the objective fails that trial (message kept) and the study goes on.
    `storage` None means `sqlite:///<out_dir>/study.db`; the same storage and study name on
    several processes or machines share the study. `base_config` holds the train config
    fields every trial shares; best.yaml is base_config updated with the best params.
    `write_files=False` skips the summary files (a worker of a large fleet); the result still
    holds the trials table and best params. `log(message)` receives what the user should read
    (a failed trial, trials still running elsewhere).
    """
    log = log or _logger.warning
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
    # Unknown names fail here, before a storage is created for nothing.
    the_sampler, the_pruner = make_sampler(sampler, seed), make_pruner(pruner)

    with _quiet_optuna():
        rdb = open_storage(storage_url)
        study = _create_or_load(rdb, study_name, the_sampler, the_pruner)
        _check_same_setup(study, space, base_config)
        lock = StudyLock(rdb, study_name)
        ran_here: list[int] = []
        failures_in_row, stop_reason, interrupted = 0, "", False
        bar = progress_bar(enable=progress, total=trials, initial=min(finished_count(study), trials),
                           desc=f"study {study_name}", unit="trial")
        try:
            while True:
                trial = _claim(study, lock, space, trials, log, stale_after)
                if trial is None:
                    break
                state, error = _run_trial(study, trial, objective, log, heartbeat_interval)
                ran_here.append(trial.number)
                failures_in_row = failures_in_row + 1 if state == TrialState.FAIL else 0
                bar.n = min(finished_count(study), trials)
                best = best_trial(study)
                if best is not None:
                    bar.set_postfix_str(f"best {best.value:.4f} (trial {best.number})")
                bar.refresh()
                if failures_in_row >= max_consecutive_failures:
                    stop_reason = (f"{failures_in_row} trials in a row failed, stopping this worker; last error: "
                                   f"{error} (all errors in {out_dir / 'trials.md'})")
                    break
        except KeyboardInterrupt:
            interrupted = True  # the finished trials are in the storage; still write their summary
        finally:
            bar.close()
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if running and not interrupted:
            log(f"{running} trial(s) still running in other workers; run the same command "
                f"again after they finish to refresh the summary")
        settings = _settings(trials, storage_url, study_name, sampler, seed, pruner, metric)
        result = summarize_study(study, space, out_dir, metric=metric, base_config=base_config,
                                 storage=settings["storage"], trials=trials)
        if write_files:
            write_study_summary(study, space, result, settings=settings, base_config=base_config,
                                environment_device=environment_device, plots=plots)
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


# ----------------------------------------------------------------------------- the test score, once

def final_test(result: StudyResult, storage: str, test_best: TestBest, *, retest: bool = False,
               log: Log | None = None) -> dict | None:
    """Score the best configuration on the test split once per study, after tuning.

    Runs only when the study is complete. The outcome is kept in the study's storage, so every
    worker and every rerun reports the same test numbers instead of computing new ones (which
    would turn the test split into a second validation set); a marker study makes sure only
    one of several workers finishing together computes it. Returns {"trial", "validation",
    "test"} or None when there is nothing (yet) to report; `log` hears why when another worker
    holds the claim.
    """
    if result.best_trial is None or result.best_config is None or not result.complete:
        return None
    with _quiet_optuna():
        return _final_test(result, storage, test_best, retest, log or _logger.warning)


def _final_test(result: StudyResult, storage: str, test_best: TestBest, retest: bool, log: Log) -> dict | None:
    rdb = open_storage(storage)
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
            log(f"another worker computes the test score of trial {result.best_trial}; "
                f"if none does any more, rerun with --retest")
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
