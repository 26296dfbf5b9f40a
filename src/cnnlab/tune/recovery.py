"""Trials that stopped without an outcome: their worker died (killed, out of memory, the machine
rebooted) or the user pressed Ctrl-C. Such a trial says nothing about its parameters, so it is
failed as `abandoned` (it does not count towards the study's total) and the same parameters are
queued to run again as a new trial, which the next worker to claim a trial takes before asking
the sampler for new ones. The files the trial registered as scratch (its weights) are deleted.

This is the idea of optuna's RetryHeartbeatStaleTrialCallback (the queued trial carries the
same `failed_trial` and `retry_history` system attributes, so optuna's helpers read them), but
driven by cnnlab's own detection of a dead worker, which works with ask-and-tell: on the same
host its process is gone (noticed at the next claim, no grace period); on another machine its
trial's heartbeat (`cnnlab.tune.storage.Heartbeat`) stopped for `STALE_AFTER` seconds.

A configuration whose worker died `MAX_RUNS` times (e.g. it needs more memory than the machine
has, and the kernel kills the process) is not run again: its last trial is a genuine failure
and counts towards the total.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from cnnlab.tune.results import OUTCOME_PREFIX
from cnnlab.tune.storage import STALE_AFTER, dead_trials

# Runs of one configuration whose worker died, after which it is failed for good.
MAX_RUNS = 3
SCRATCH = "scratch_files"  # user attr: files of the trial to delete when it is abandoned


def retry_history(trial: FrozenTrial) -> list[int]:
    """Numbers of the earlier trials that ran these parameters and were abandoned, oldest first."""
    return list(trial.system_attrs.get("retry_history", []))


def remove_scratch(trial: FrozenTrial) -> None:
    """Delete the files the trial registered as scratch, and the temporary files an atomic
    write of them leaves when the process is killed mid-write (`cnnlab.core.files.atomic_path` names
    them `.NAME.*` in the same folder)."""
    for name in trial.user_attrs.get(SCRATCH, []):
        path = Path(name)
        path.unlink(missing_ok=True)
        if path.parent.is_dir():
            for partial in path.parent.glob(f".{path.name}.*"):
                partial.unlink(missing_ok=True)


def queue_rerun(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue `trial`'s parameters as a new WAITING trial, remembering where they come from."""
    history = retry_history(trial) + [trial.number]
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=dict(trial.params), distributions=dict(trial.distributions),
        system_attrs={"failed_trial": history[0], "retry_history": history}))


def _frozen(study: optuna.Study, number: int) -> FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def abandon_interrupted(study: optuna.Study, trial: optuna.Trial) -> None:
    """A trial stopped by Ctrl-C: failed as abandoned, its parameters queued again (a resumed
    study evaluates them first). The objective already cleaned up after itself."""
    trial.set_user_attr("error", "interrupted; its parameters run again when the study resumes")
    trial.set_user_attr("abandoned", True)
    study.tell(trial, state=TrialState.FAIL)
    queue_rerun(study, _frozen(study, trial.number))


def recover_dead_trials(study: optuna.Study, stale_after: float = STALE_AFTER) -> list[str]:
    """Fail the RUNNING trials whose worker is gone (`dead_trials`), delete their scratch files
    and queue their parameters again (up to `MAX_RUNS` deaths per configuration).
    Call it under the study's lock, so two workers never recover one trial twice.
    Returns a message for the user per trial it failed."""
    failed = []
    for trial, what in dead_trials(study, stale_after):
        worker = trial.user_attrs.get("worker", "")
        runs = len(retry_history(trial)) + 1
        again = runs < MAX_RUNS
        message = (f"worker {worker} {what}; its parameters run again" if again else
                   f"worker {worker} {what}, as in all {runs} runs of these parameters; "
                   f"not run again (out of memory?)")
        try:
            # Another process's trial: what happened to it is recorded on the study (optuna's
            # public API sets attributes only on one's own trials; `results.outcome_attrs`).
            study.set_user_attr(f"{OUTCOME_PREFIX}{trial.number}", {"abandoned": again, "error": message})
            study.tell(trial.number, state=TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError):
            continue  # it finished after all
        with contextlib.suppress(OSError):
            remove_scratch(trial)
        if again:
            queue_rerun(study, trial)
        failed.append(f"trial {trial.number}: {message}")
    return failed
