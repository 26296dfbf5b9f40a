"""What a study holds, read back from its storage: the trials table, the best trial, the
counts per state, and the train config of a trial (the base config with the trial's params).
Every worker and every rerun builds the same summary of the whole study from these.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import to_plain
from cnnlab.tune.space import SearchSpace


@dataclass
class StudyResult:
    """The whole study (trials of every worker) as one worker saw it when it finished."""
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


# Optuna lets a process set attributes only on the trials it runs (`Trial.set_user_attr`); what a
# worker records about another worker's trial (recovery: abandoned, why) goes on the study, under
# this prefix and the trial's number (`Study.set_user_attr`), and is read merged with the trial's own.
OUTCOME_PREFIX = "trial-outcome:"


def outcome_attrs(study: optuna.Study, trial: FrozenTrial) -> dict:
    """The trial's user attributes, with what other workers recorded about it on the study."""
    return {**trial.user_attrs, **study.user_attrs.get(f"{OUTCOME_PREFIX}{trial.number}", {})}


def counted(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Trials that use up the `trials` budget: all but those whose worker died or was
    interrupted (`abandoned`), which a rerun replaces."""
    return not outcome_attrs(study, trial).get("abandoned", False)


def finished_count(study: optuna.Study) -> int:
    """Finished trials that count towards the study's total."""
    return sum(t.state.is_finished() and counted(study, t) for t in study.get_trials(deepcopy=False))


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The completed trial with the highest score; the earlier one on a tie."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


# Trials table order, and the states counted in every summary (zero counts included).
STATE_ORDER = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.FAIL: 2,
               TrialState.RUNNING: 3, TrialState.WAITING: 4}


def trial_rows(study: optuna.Study, space: SearchSpace) -> list[dict]:
    """One row per trial: best completed first, then pruned (by their last score), failed,
    running; ties by trial number."""
    trials = study.get_trials(deepcopy=False)

    def order(t: FrozenTrial):
        score = t.value if t.value is not None else -math.inf
        return (STATE_ORDER.get(t.state, 5), -score, t.number)

    rows = []
    for t in sorted(trials, key=order):
        duration = t.duration.total_seconds() if t.duration is not None else None
        row = {"trial": t.number, "state": t.state.name.lower(), "score": t.value}
        row.update({name: t.params.get(name) for name in space.names})
        row.update({"steps": len(t.intermediate_values),
                     "duration_s": round(duration, 2) if duration is not None else None,
                     "worker": t.user_attrs.get("worker", ""),
                     "error": outcome_attrs(study, t).get("error", "")})
        rows.append(row)
    return rows


def summarize_study(study: optuna.Study, space: SearchSpace, out_dir: str | Path, *, metric: str,
                    base_config: dict | None, storage: str, trials: int) -> StudyResult:
    """The result of the whole study as the storage holds it now (trials of every worker);
    `storage` is the redacted URL, `trials` the total the study should hold."""
    rows = trial_rows(study, space)
    counts = {s.name.lower(): 0 for s in STATE_ORDER}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    best = best_trial(study)
    best_params = None if best is None else {name: best.params[name] for name in space.names if name in best.params}
    return StudyResult(study_name=study.study_name, storage=storage, metric=metric,
                       best_params=best_params, best_value=best.value if best else None,
                       best_trial=best.number if best else None, counts=counts, ran_here=[], rows=rows,
                       out_dir=Path(out_dir), best_config=trial_config(base_config, best_params) if best else None,
                       complete=(finished_count(study) >= trials and not counts["running"]))
