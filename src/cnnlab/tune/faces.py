"""The face trainer (`cnnlab.tasks.faces.train_view1`) as a study's objective and as the
once-only test of the best configuration, and the base recipe every trial of a face study shares.

The face task is imported inside the functions that train, so `import cnnlab.tune` works (and
`run_study` runs any objective) even while the face task cannot be imported.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path

from cnnlab.core.config import RUN_ONLY_FIELDS
from cnnlab.core.errors import CnnlabError
from cnnlab.tune.results import trial_config
from cnnlab.tune.space import SearchSpace
from cnnlab.tune.study import ReportEpoch

# What a trial's run directory must not keep: the weights (checkpoint each epoch, final model).
WEIGHT_FILES = ("checkpoint.pt", "model.pt")


def face_base_config(space: SearchSpace, explicit: Iterable[str], resolve: Callable[[], dict]) -> dict:
    """The recipe every trial shares: the resolved face train config minus the tuned fields
    and the where-to-run fields.

    `explicit` names the fields the user set (a flag or the --config file): setting a tuned
    field explicitly is an error, not a silent override of the search; so is a search space
    parameter that is not a face train config field. `resolve()` returns the resolved config
    as a plain mapping of every field; it is called after these checks, so their message wins
    over whatever the config makes of a value the space would have replaced.
    """
    from cnnlab.tasks.faces import FaceTrainConfig

    fields = [f.name for f in dataclasses.fields(FaceTrainConfig)]
    unknown = [n for n in space.names if n not in fields]
    if unknown:
        raise CnnlabError(f"search space parameter {unknown[0]!r} is not a face train config field; "
                          f"valid: {', '.join(fields)}")
    fixed = sorted(set(explicit) & set(space.names))
    if fixed:
        raise CnnlabError(f"{', '.join(fixed)} set by a flag or --config but tuned by the search space; "
                          f"drop the setting or remove it from the space (--space)")
    return {k: v for k, v in resolve().items() if k not in space.names and k not in RUN_ONLY_FIELDS}


class FaceTrainer:
    """The face trainer (`cnnlab.tasks.faces.train_view1`) as the study's objective and as the
    once-only test of the best configuration.

    A trial trains on View 1's DevTrain people minus a seeded validation split and returns the
    validation AUC its epoch is selected by (`select_on`), reporting it after every epoch for
    the pruner; it is called with `evaluate_test=False`, so the DevTest pairs are never read while tuning. Trial
    run directories keep their metrics and config; their weights are deleted (the best
    configuration is retrained for the test, and trials may run on other machines anyway), also
    when the worker dies mid-trial (the trial registers them as scratch, `TrialPruning.scratch`).
    Trainers log to a `log.txt` in their run directory (the study's progress bar owns the
    terminal); the test of the best configuration also passes its lines to `echo`.
    """
    metric = "validation AUC"

    def __init__(self, base_config: dict, data_root: str | Path, out_dir: str | Path, *,
                 device: str = "auto", progress: bool | None = None, echo: Callable[[str], None] | None = None):
        self.base_config = base_config
        self.data_root = Path(data_root)
        self.out_dir = Path(out_dir)
        self.run_options = {"device": device, "progress": progress}
        self.echo = echo
        # Trials in one process share the frozen-feature tensor (same frozen weights and people)
        # instead of each reloading minutes' worth of features from the disk cache.
        self._features = None

    def _memo(self):
        if self._features is None:
            from cnnlab.tasks.faces import FeatureMemo
            self._features = FeatureMemo()
        return self._features

    def _config(self, mapping: dict):
        from cnnlab.core.config import build_config
        from cnnlab.tasks.faces import FaceTrainConfig
        return build_config(FaceTrainConfig, mapping, self.run_options)

    def objective(self, params: dict, report_epoch: ReportEpoch) -> float:
        from cnnlab.tasks.faces import train_view1
        config = self._config(trial_config(self.base_config, params))
        run_dir = self.out_dir / "trials" / f"trial-{getattr(report_epoch, 'number', 0):04d}"
        weights = [run_dir / name for name in WEIGHT_FILES]
        if hasattr(report_epoch, "scratch"):
            report_epoch.scratch(*weights)  # deleted by another worker if this process dies mid-trial
        with _RunLog(run_dir / "log.txt") as log:
            try:
                # evaluate_test=False: no test pairs are read, and no figures are drawn.
                metrics = train_view1(config, self.data_root, run_dir, evaluate_test=False,
                                      report_epoch=report_epoch, log=log, features=self._memo())
            finally:
                for path in weights:
                    path.unlink(missing_ok=True)
        return float(metrics["selection_auc"])  # LFW's validation AUC, or with select_on=both the mean

    def test_best(self, config: dict, run_dir: Path) -> dict:
        from cnnlab.tasks.faces import train_view1
        with _RunLog(Path(run_dir) / "log.txt", echo=self.echo) as log:
            metrics = train_view1(self._config(config), self.data_root, run_dir, evaluate_test=True, log=log,
                                  features=self._memo())
        return {**metrics["test"], "run_dir": str(run_dir)}


class _RunLog:
    """A trainer's `log` callable appending to a file, each line also passed to `echo`."""

    def __init__(self, path: Path, echo: Callable[[str], None] | None = None):
        self.path, self.echo = path, echo

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")
        return self

    def __call__(self, message: str) -> None:
        self._file.write(message + "\n")
        self._file.flush()
        if self.echo is not None:
            self.echo(message)

    def __exit__(self, *exc) -> None:
        self._file.close()
