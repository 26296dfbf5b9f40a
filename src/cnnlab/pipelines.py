"""Workflows: train, then draw from the run's files, then report. What `cnnlab faces train`,
`cnnlab faces margins`, `cnnlab faces tune`'s final test and `make demo` run, in one place (the CLI parses flags and
prints; the tasks train and write files; the plots and reports read those files)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cnnlab.core.progress import no_log


def view1_with_plots(config, data_root, out_dir, *, evaluate_test: bool, report_epoch=None,
                     log: Callable[[str], None] = no_log) -> dict:
    """`train_view1`, then, when DevTest was scored, its figures drawn from the run's files
    and listed in metrics.json ("plots"): what `faces train` and `make demo` produce."""
    from cnnlab.reports.plots.faces import plot_run
    from cnnlab.tasks.faces import record_plots, train_view1
    metrics = train_view1(config, data_root, out_dir, evaluate_test=evaluate_test, report_epoch=report_epoch,
                          log=log)
    if metrics["test"] is not None:
        log("drawing the figures")
        metrics = record_plots(out_dir, metrics, plot_run(out_dir, progress=config.progress))
    return metrics


def with_run_plots(test_best: Callable[[dict, Path], dict]) -> Callable[[dict, Path], dict]:
    """A tuner's once-only DevTest run (`FaceTrainer.test_best`) that also draws the figures
    `faces train` draws, from the run's files, and lists them in its metrics.json."""
    def run(config: dict, run_dir: Path) -> dict:
        from cnnlab.core.files import read_json
        from cnnlab.reports.plots.faces import plot_run
        from cnnlab.tasks.faces import METRICS_FILE, record_plots
        record = test_best(config, run_dir)
        record_plots(run_dir, read_json(Path(run_dir) / METRICS_FILE), plot_run(run_dir))
        return record
    return run


def margins_with_report(config, margins, data_root, out_dir, *, log: Callable[[str], None] = no_log) -> dict:
    """`compare_margins`, then each run's figures (as `faces train` draws them), the
    side-by-side figures and the comparison (comparison.json lists the figures,
    comparison.md embeds them)."""
    from cnnlab.core.files import read_json
    from cnnlab.reports.margins import write_margins_report
    from cnnlab.reports.plots.faces import plot_margin_comparison, plot_run
    from cnnlab.tasks.faces import METRICS_FILE, compare_margins, record_plots
    comparison = compare_margins(config, margins, data_root, out_dir, log=log)
    runs = comparison["runs"]
    for run in runs:
        record_plots(run["run_dir"], read_json(Path(run["run_dir"]) / METRICS_FILE), plot_run(run["run_dir"]))
    figures = plot_margin_comparison([Path(r["run_dir"]) for r in runs], [f"margin {r['margin']:g}" for r in runs],
                                     out_dir)
    return write_margins_report(out_dir, comparison, figures)


def compare_blocks(blocks, recipe, out, *, report: bool = True,
                   log: Callable[[str], None] = no_log) -> tuple[dict, Path | None]:
    """`compare` (results.md rewritten after each block, so an interruption never loses the
    table of the finished ones), then report.{md,html} drawn from the files it wrote (rank 0
    only under torchrun). Returns (results, report path or None)."""
    from cnnlab.reports.results_table import write_results_markdown
    from cnnlab.tasks.cifar import compare
    from cnnlab.training.distributed import is_main_process
    results = compare(blocks, recipe, out, log=log, on_results=lambda r: write_results_markdown(r, out))
    if not report or not is_main_process():
        return results, None
    from cnnlab.reports.cifar import write_report
    return results, write_report(out, progress=recipe.train.progress)
