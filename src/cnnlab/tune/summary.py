"""The summary of a study, rewritten by every worker and every rerun from the storage:

    trials.csv, trials.md   every trial (params, state, score, duration, worker, error), best first
    score_vs_params.png     the score against each parameter
    history.png             score per trial and the best so far
    importances.json        each parameter's share of the score's variance (fANOVA), once
                            enough trials completed
    best.yaml               the best trial's params merged into the base train config
    study.yaml              resolved study settings, search space and base config
    environment.json        versions and machine (`cnnlab.core.env.environment`)
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from cnnlab.core.files import atomic_write_text, save_yaml, write_json
from cnnlab.tune.results import StudyResult, best_trial
from cnnlab.tune.space import Categorical, IntRange, LogUniform, SearchSpace, Uniform


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def rows_to_csv(rows: list[dict]) -> str:
    """The trials table as CSV, full precision (for reading back)."""
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


_TEXT_COLUMNS = ("state", "worker", "error")


def rows_to_markdown(rows: list[dict], metric: str) -> str:
    """The trials table as Markdown, rounded for reading; the score column is named `metric`."""
    if not rows:
        return "(no trials)\n"
    columns = list(rows[0])
    header = [metric if c == "score" else c for c in columns]
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join("---" if c in _TEXT_COLUMNS else "---:" for c in columns) + " |"]
    for row in rows:
        cells = [_fmt(row[c]).replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_study_summary(study: optuna.Study, space: SearchSpace, result: StudyResult, *, settings: dict,
                        base_config: dict | None, environment_device: Any = None, plots: bool = True) -> None:
    """Write the trials table, plots, best.yaml, study.yaml and environment.json of `result`
    (from `summarize_study`) into `result.out_dir`, recording each file in `result.files`."""
    out_dir, metric, rows, counts = result.out_dir, result.metric, result.rows, result.counts
    written = result.files
    atomic_write_text(out_dir / "trials.csv", rows_to_csv(rows))
    written["trials.csv"] = out_dir / "trials.csv"
    best = (f". Best: trial {result.best_trial}, {metric} {result.best_value:.4f}.\n\n"
            if result.best_trial is not None else ". No trial completed.\n\n")
    summary = (f"# Study `{study.study_name}`\n\n{len(rows)} trials: "
               + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + best)
    importances = param_importances(study)
    write_json(out_dir / "importances.json", importances)
    written["importances.json"] = out_dir / "importances.json"
    atomic_write_text(out_dir / "trials.md",
                      summary + importances_markdown(importances) + rows_to_markdown(rows, metric))
    written["trials.md"] = out_dir / "trials.md"

    if result.best_config is not None:
        # Same names as the face train config, so `cnnlab faces train --config best.yaml` reads it.
        save_yaml(result.best_config, out_dir / "best.yaml")
        written["best.yaml"] = out_dir / "best.yaml"

    best_record = None if result.best_trial is None else {
        "trial": result.best_trial, "value": result.best_value, "params": result.best_params}
    save_yaml({"study": settings, "search_space": space.to_dict(), "base_config": base_config or {},
               "best": best_record}, out_dir / "study.yaml")
    written["study.yaml"] = out_dir / "study.yaml"
    from cnnlab.core.env import environment
    write_json(out_dir / "environment.json", environment(environment_device))
    written["environment.json"] = out_dir / "environment.json"

    if plots:
        written["score_vs_params.png"] = plot_score_vs_params(study, space, out_dir / "score_vs_params.png", metric)
        written["history.png"] = plot_history(study, out_dir / "history.png", metric)


# fANOVA fits a random forest to (params -> score): with fewer completed trials than this its
# shares are noise (two trials give any parameter any share).
MIN_TRIALS_FOR_IMPORTANCE = 8


def param_importances(study: optuna.Study, min_trials: int = MIN_TRIALS_FOR_IMPORTANCE) -> dict:
    """Which parameters the score depends on: optuna's fANOVA (seeded, so a rerun of the summary
    gives the same shares) over the completed trials. Pruned trials are left out (optuna's
    importances take completed trials only; a pruned trial's last score is from an earlier epoch
    than the others'). `importances` is None below `min_trials` completed trials."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    complete, _ = _scored(study)
    record = {"method": "fanova", "completed_trials": len(complete), "min_trials": min_trials, "importances": None}
    if len(complete) >= min_trials:
        shares = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
        record["importances"] = {name: float(share) for name, share in shares.items()}
    return record


def importances_markdown(record: dict) -> str:
    if record["importances"] is None:
        return (f"Parameter importances: not estimated ({record['completed_trials']} completed trials, "
                f"fANOVA needs {record['min_trials']}).\n\n")
    shares = ", ".join(f"{name} {share:.2f}" for name, share in record["importances"].items())
    return (f"Parameter importances (optuna's fANOVA over the {record['completed_trials']} completed trials; "
            f"shares of the score's variance, largest first): {shares}.\n\n")


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

    from cnnlab.reports.plots.common import new_figure, save_figure

    complete, pruned = _scored(study)
    best = best_trial(study)
    names = space.names
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = new_figure(4.0 * ncols, 3.2 * nrows, nrows, ncols)
    axes = np.atleast_1d(axes).ravel()
    jitter = np.random.default_rng(0)
    for ax, name in zip(axes, names):
        distribution = space.params[name]
        scored = [t for t in complete + pruned if name in t.params]
        if isinstance(distribution, Categorical):
            index = {repr(c): i for i, c in enumerate(distribution.choices)}
            x = {t.number: index[repr(t.params[name])] + jitter.uniform(-0.12, 0.12) for t in scored}
        elif isinstance(distribution, IntRange):
            x = {t.number: t.params[name] + jitter.uniform(-0.06, 0.06) * distribution.step for t in scored}
        else:
            x = {t.number: float(t.params[name]) for t in scored}

        def draw(trials, *, ax=ax, x=x, **style):
            trials = [t for t in trials if t.number in x]
            if trials:
                ax.scatter([x[t.number] for t in trials], [t.value for t in trials], **style)

        draw(pruned, marker="x", color="0.6", label="pruned (last score)")
        draw(complete, color="tab:blue", alpha=0.8, label="complete")
        if best is not None:
            draw([best], marker="*", s=200, color="tab:red", zorder=3, label="best")
        if isinstance(distribution, Categorical):
            ax.set_xticks(range(len(distribution.choices)), [str(c) for c in distribution.choices])
            ax.set_xlim(-0.5, len(distribution.choices) - 0.5)
        elif isinstance(distribution, LogUniform):
            ax.set_xscale("log")
            # Within two decades label 1-2-5 steps, beyond only the powers of ten; minor ticks
            # unlabelled either way (their 2x10^-3 labels run into each other).
            decades = math.log10(distribution.high / distribution.low) if distribution.low < distribution.high else 0
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5) if decades <= 2 else (1,)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        if isinstance(distribution, (LogUniform, Uniform, IntRange)) and distribution.low < distribution.high:
            pad = 0.0 if isinstance(distribution, LogUniform) else 0.06 * (distribution.high - distribution.low)
            ax.set_xlim(distribution.low - pad, distribution.high + pad)
        if isinstance(distribution, IntRange) and (distribution.high - distribution.low) // distribution.step <= 10:
            ax.set_xticks(range(distribution.low, distribution.high + 1, distribution.step))
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
    from cnnlab.reports.plots.common import new_figure, save_figure

    complete, pruned = _scored(study)
    fig, ax = new_figure(7.0, 4.0)
    if pruned:
        ax.scatter([t.number for t in pruned], [t.value for t in pruned], marker="x", color="0.6",
                   label="pruned (last score)")
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
