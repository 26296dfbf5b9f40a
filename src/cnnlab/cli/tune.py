"""`cnnlab faces tune`: search the face training recipe with optuna (`cnnlab.tune`).

The recipe flags are those of `cnnlab faces train` (every FaceTrainConfig field, --preset,
--config). This module reads the arguments and prints; the study itself is `cnnlab.tune`.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from cnnlab.cli import catalog
from cnnlab.cli.options import (
    add_face_recipe_flags,
    add_lfw_flag,
    explicit_face_fields,
    face_config_from_args,
    lfw_root_from_args,
)

if TYPE_CHECKING:
    from cnnlab.tune import SearchSpace


def register(faces_commands) -> None:
    """Add `tune` to the `cnnlab faces` subcommands (`faces_commands`, their subparsers)."""
    p = faces_commands.add_parser(
        "tune", help="search the training recipe with optuna on View 1 training people only",
        description="Each trial trains on View 1 training people and is scored (validation AUC) on a "
                    "people-disjoint validation split of them; the DevTest pairs are read once, after the "
                    "study, to score the best configuration. Workers started with the same --storage and "
                    "--study share the study; --trials is the total over all of them. --seed seeds the "
                    "sampler (the same seed proposes the same configurations) as well as every trial's "
                    "training and validation split.")
    names = catalog.load()
    study_name, space_file = names["default_study_name"], names["default_space_file"]
    g = p.add_argument_group("study")
    g.add_argument("--trials", type=int, default=20,
                   help="total number of trials in the study, all workers together (default 20)")
    g.add_argument("--storage", metavar="URL",
                   help="optuna storage the workers share: sqlite:///FILE.db (one machine) or "
                        "postgresql://user:pass@host/db, mysql://... (many); default sqlite:///OUT/study.db")
    g.add_argument("--study", default=study_name, metavar="NAME",
                   help=f"study name in the storage (default {study_name})")
    g.add_argument("--sampler", choices=names["samplers"], default="random", help="random (default) or tpe")
    g.add_argument("--pruner", choices=names["pruners"], default="none",
                   help="median: stop a trial whose validation AUC is below the median at the same epoch")
    g.add_argument("--space", metavar="NAME|FILE", help=f"search space: a YAML file, or a packaged one: "
                   f"default (cnnlab/{space_file}) or recipe (the current face recipe's knobs)")
    g.add_argument("--out", default="runs/faces-tune", metavar="DIR",
                   help="study summary folder (default runs/faces-tune)")
    add_lfw_flag(g)
    g.add_argument("--no-test", dest="test", action="store_false",
                   help="do not score the best configuration on the View 1 DevTest pairs after the study")
    g.add_argument("--retest", action="store_true", help="score the best configuration on DevTest again")
    add_face_recipe_flags(p)
    p.set_defaults(func=run_tune)


def base_config_from_args(args: argparse.Namespace, space: SearchSpace) -> dict:
    """The recipe every trial shares: --preset, then --config, then flags, minus the tuned
    fields and where-to-run fields (`cnnlab.tune.face_base_config` says which is an error)."""
    from cnnlab.core.files import load_yaml, to_plain
    from cnnlab.tune import face_base_config
    explicit = {name for name, value in explicit_face_fields(args).items() if value is not None}
    if args.config:
        explicit |= set(load_yaml(args.config))
    return face_base_config(space, explicit, lambda: to_plain(face_config_from_args(args)))


def _warn(message: str) -> None:
    print(f"cnnlab tune: {message}", file=sys.stderr)


def run_tune(args: argparse.Namespace) -> int:
    from cnnlab.core.errors import CnnlabError
    from cnnlab.core.files import check_output_dir
    from cnnlab.pipelines import with_run_plots
    from cnnlab.tune import FaceTrainer, SearchSpace, default_storage, final_test, run_study
    space = SearchSpace.resolve(args.space)
    base = base_config_from_args(args, space)
    out_dir = check_output_dir(args.out)  # before the study opens or any image is read
    trainer = FaceTrainer(base, lfw_root_from_args(args), out_dir, device=args.device or "auto",
                          progress=args.progress, echo=print)
    storage = args.storage or default_storage(out_dir)
    result = run_study(trainer.objective, space, trials=args.trials, out_dir=out_dir, storage=storage,
                       study_name=args.study, sampler=args.sampler, seed=base["seed"], pruner=args.pruner,
                       metric=trainer.metric, base_config=base, progress=args.progress,
                       environment_device=_resolved_device(args.device), log=_warn)
    print(f"study {result.study_name}: " + ", ".join(f"{n} {s}" for s, n in result.counts.items() if n)
          + f"; table {out_dir / 'trials.md'}")
    if result.best_params is None:
        raise CnnlabError(f"no trial completed; the errors are in {out_dir / 'trials.md'}")
    print(f"best: trial {result.best_trial}, {result.metric} {result.best_value:.4f}; config {out_dir / 'best.yaml'}")
    if args.test and result.complete:
        record = final_test(result, storage, with_run_plots(trainer.test_best), retest=args.retest, log=_warn)
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
    from cnnlab.core.env import resolve_device
    return resolve_device(name or "auto")
