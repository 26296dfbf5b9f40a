"""`make demo`: the project's main jobs on the real data, sized for a 2-core CPU.

A fixed sequence of steps, each printing what it produced. Every step writes under
`--out` (default `runs/demo`) and is idempotent: a second run reuses what a finished
earlier run wrote (the CIFAR comparison skips finished blocks and resumes an interrupted
one; the report is rewritten from the saved files).

    1. CIFAR-10 block comparison, `quick` preset (all six blocks), results table + report
    2. LFW View 1 face verification, `demo` face preset: DevTest metrics + plots
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path


def cifar_comparison(out: Path, recipe=None, blocks: list[str] | None = None) -> None:
    """The default blocks under the `quick` recipe (`cnnlab.tasks.cifar.Recipe`); a test passes
    a tinier recipe and fewer blocks to run the same step in seconds."""
    from cnnlab.blocks import BLOCKS
    from cnnlab.pipelines import compare_blocks
    from cnnlab.reports.results_table import results_markdown
    from cnnlab.tasks.cifar import resolve_recipe

    recipe = resolve_recipe("quick") if recipe is None else recipe
    blocks = BLOCKS.default_names() if blocks is None else blocks
    # The report is drawn from the files the comparison wrote, after it.
    results, report = compare_blocks(blocks, recipe, out / "cifar", log=print)
    print()
    print(results_markdown(results), end="")
    print(f"results: {out / 'cifar' / 'results.md'}")
    print(f"report: {report}")


# ---------------------------------------------------------------------------- faces (Part 2)
def same_recipe(recipe_file: Path, config) -> bool:
    """Whether a finished run's saved face recipe (read by `saved_recipe`: fields it lacks are
    their defaults, so an upgrade alone does not retrain the step) is `config`."""
    from cnnlab.core.errors import CnnlabError
    from cnnlab.core.files import to_plain
    from cnnlab.tasks.faces.config import saved_recipe

    if not recipe_file.is_file():
        return False
    try:
        return to_plain(saved_recipe(recipe_file)) == to_plain(config)
    except CnnlabError:  # a field this version does not know, or a value it refuses
        return False


def faces_view1(out: Path, config=None, lfw_root: Path | None = None) -> None:
    """LFW View 1 with the `demo` face preset: Lite0's last stages fine-tuned on cached
    early-stage features; DevTest scored once at the threshold calibrated on validation people.
    A test passes a tiny `FaceTrainConfig` and a synthetic LFW folder (default: $CNNLAB_DATA/lfw)."""
    from cnnlab.core.files import read_json
    from cnnlab.pipelines import view1_with_plots
    from cnnlab.tasks.faces import default_lfw_root, format_retrieval, format_test, preset_config
    from cnnlab.tasks.faces.view1 import retrieval_name

    run_dir = out / "faces-view1"
    config = preset_config("demo") if config is None else config
    lfw_root = default_lfw_root() if lfw_root is None else lfw_root
    done = run_dir / "metrics.json"
    if done.is_file() and same_recipe(run_dir / "faces_config.yaml", config) and read_json(done).get("plots"):
        print(f"finished earlier, reusing {run_dir}")
        metrics = read_json(done)
    else:
        metrics = view1_with_plots(config, lfw_root, run_dir, evaluate_test=True, log=print)
    print()
    print(format_test(metrics["test"], "LFW View 1 DevTest (1,000 pairs)"))
    if metrics.get("retrieval"):
        print(format_retrieval(metrics["retrieval"], retrieval_name(config)))
    print(f"training {metrics['train_time_s']:.0f} s (+ {metrics['feature_cache_time_s']:.0f} s caching frozen "
          f"features), best epoch {metrics['best_epoch']} of {metrics['epochs']}")
    print(f"metrics: {run_dir / 'metrics.json'}  model: {run_dir / 'model.pt'}")
    print("plots: " + "  ".join(metrics.get("plots", [])))


# (title, step): run in this order; a later step may read what an earlier one wrote.
STEPS: list[tuple[str, Callable[[Path], None]]] = [
    ("CIFAR-10: compare the six blocks (quick preset)", cifar_comparison),
    ("LFW View 1: Siamese Lite0 face verifier (demo preset)", faces_view1),
]


def main(argv: list[str] | None = None) -> int:
    from cnnlab.cli import DEBUG_HELP, line_buffered_output, run_guarded
    from cnnlab.core.files import check_output_dir

    line_buffered_output()
    parser = argparse.ArgumentParser(prog="python -m cnnlab.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(argv)
    out = Path(args.out)
    start = time.perf_counter()
    # The CLI's error boundary, per step: a user error is one line (exit 2), anything else one
    # line naming the step (exit 1), the traceback only with --debug or CNNLAB_DEBUG=1.
    code = run_guarded(lambda: check_output_dir(out) and 0, "cnnlab demo", debug=args.debug)  # before any data
    if code:
        return code
    for number, (title, step) in enumerate(STEPS, 1):
        print(f"== step {number}/{len(STEPS)}: {title}", flush=True)
        step_start = time.perf_counter()
        code = run_guarded(functools.partial(step, out), f"cnnlab demo step {number} ({title})", debug=args.debug)
        if code:
            return code
        print(f"== step {number} done in {time.perf_counter() - step_start:.0f} s", flush=True)
    print(f"demo finished in {time.perf_counter() - start:.0f} s; outputs in {out}")
    report = out / "cifar" / "report.html"
    if report.is_file():
        print(f"report: {report.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
