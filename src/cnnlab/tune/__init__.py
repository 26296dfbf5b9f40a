"""Hyperparameter search for the face verifier: an optuna study (Akiba et al. 2019) that many
worker processes or machines share through one RDB storage.

Random search is the default sampler, TPE the option for longer studies, and bad trials can be
stopped early by median stopping (`samplers`). The objective is injected: a callable
`objective(params, report_epoch) -> score` that trains with `params` on View 1 *train* people and
returns a score on a people-disjoint validation split of them (higher is better, e.g.
validation AUC). It never sees the test pairs: the View 1 test score of the best config is
computed once, after the study (`final_test`), and reported apart from validation.
`FaceTrainer` adapts `cnnlab.tasks.faces.train_view1` to both roles.

    space.py     distributions and the search space (default: cnnlab/tune/space_default.yaml)
    samplers.py  seeded random search, TPE, pruners, by name
    storage.py   the shared storage, the lock workers claim trials under, worker ids
    recovery.py  a trial whose worker died or was interrupted: its parameters run again
    study.py     run_study (the workers' loop) and final_test (the test score, once)
    results.py   the study read back: trials table, best trial, StudyResult
    summary.py   the summary files and figures of a study
    faces.py     the face trainer as objective and final test; the base recipe of a face study

This package is a library: no argparse and no printing. `cnnlab faces tune` lives in
`cnnlab.cli.tune`; messages for the user reach it through `log` callables.

Outputs in `out_dir`: the study's summary (`cnnlab.tune.summary` lists its files) and, after a
complete study, test.json: the best config's test score (`final_test`).
"""
from __future__ import annotations

from cnnlab.tune.faces import FaceTrainer, face_base_config
from cnnlab.tune.results import StudyResult, summarize_study, trial_config, trial_rows
from cnnlab.tune.samplers import PRUNERS, SAMPLERS, TrialSeededRandomSampler, make_pruner, make_sampler
from cnnlab.tune.space import DISTRIBUTIONS, Categorical, IntRange, LogUniform, SearchSpace, Uniform
from cnnlab.tune.storage import StudyLock, default_storage, redact, worker_id
from cnnlab.tune.study import (
                               DEFAULT_STUDY_NAME,
                               MAX_CONSECUTIVE_FAILURES,
                               Log,
                               Objective,
                               ReportEpoch,
                               TestBest,
                               TrialPruning,
                               final_test,
                               run_study,
)
from cnnlab.tune.summary import plot_history, plot_score_vs_params, rows_to_csv, rows_to_markdown, write_study_summary

__all__ = [
    "Categorical", "DEFAULT_STUDY_NAME", "DISTRIBUTIONS", "FaceTrainer", "IntRange", "Log", "LogUniform",
    "MAX_CONSECUTIVE_FAILURES", "Objective", "PRUNERS", "ReportEpoch", "SAMPLERS", "SearchSpace", "StudyLock",
    "StudyResult", "TestBest", "TrialPruning", "TrialSeededRandomSampler", "Uniform", "default_storage",
    "face_base_config", "final_test", "make_pruner", "make_sampler", "plot_history", "plot_score_vs_params",
    "redact", "rows_to_csv", "rows_to_markdown", "run_study", "summarize_study", "trial_config", "trial_rows",
    "worker_id", "write_study_summary",
]
