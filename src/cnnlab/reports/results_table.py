"""The results table of a CIFAR-10 comparison: every block's row beside the reference report's
figures. `results_table` renders it, once, for both places it appears: results.md (with the
reduced-budget caption and the recipe line, `results_markdown`; written from results.json after
each block by `cnnlab.pipelines.compare_blocks`, and printed by the CLI and the demo) and
report.{md,html} (`cnnlab.reports.cifar`). The comparison itself (`cnnlab.tasks.cifar.compare`)
writes only data files."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnlab.blocks.reference import REPORT_PARAMS, REPORT_TRAIN_ACC, REPORT_TRAIN_TIME_S, REPORT_VAL_ACC
from cnnlab.core.files import atomic_write_text
from cnnlab.metrics.classification import TRAIN_ACC_NOTE
from cnnlab.reports.document import render_markdown
from cnnlab.reports.text import budget_caption, minutes, reference_note

RESULTS_MD = "results.md"
# Each of the reference report's figures sits right after ours, so the two read side by side.
HEADERS = ["block", "params", "report params", "MACs/image", "val acc", "report val acc", "test acc", "train acc",
           "report train acc", "train time (s)", "report train time", "images/s", "precision", "device"]


def results_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(headers, one list of cell strings per row) of results.json's rows; a value a row lacks
    (a block the report did not train, a run from before precision was recorded) is "-"."""
    def pct(x: Any) -> str:
        return "-" if x is None else f"{x:.2%}"

    def num(x: Any, fmt: str = "{:,.0f}") -> str:
        return "-" if x is None else fmt.format(x)

    body = []
    for r in rows:
        b = r.get("block")
        body.append([str(b), num(r.get("params")), num(REPORT_PARAMS.get(b)),
                     num(None if r.get("macs") is None else r["macs"] / 1e6, "{:,.1f}M"),
                     pct(r.get("val_acc")), pct(REPORT_VAL_ACC.get(b)), pct(r.get("test_acc")),
                     pct(r.get("train_acc")), pct(REPORT_TRAIN_ACC.get(b)), num(r.get("train_time_s"), "{:,.1f}"),
                     minutes(REPORT_TRAIN_TIME_S.get(b)), num(r.get("images_per_s")),
                     str(r.get("precision", "-")), str(r.get("device", "-"))])
    return HEADERS, body


def write_results_markdown(results: dict, out: str | Path) -> Path:
    return atomic_write_text(Path(out) / RESULTS_MD, results_markdown(results))


def results_markdown(results: dict) -> str:
    """results.md: the table, the reduced-budget caption (when the budget is reduced), the note
    on the reference report's figures, the recipe line."""
    caption = budget_caption(results["recipe"], results["data"])
    return render_markdown([("table", *results_table(results["rows"])),
                            *([("p", f"**{caption}**")] if caption else []),
                            ("p", reference_note()), ("p", recipe_line(results))])


def recipe_line(results: dict) -> str:
    recipe, data = results["recipe"], results["data"]
    train = recipe["train"]
    subset = (f"stratified subset of {data['train']:,} training images"
              if data.get("train_subset") else f"all {data['train']:,} training images")
    devices = sorted({r["device"] for r in results["rows"]}) or ["-"]
    used = sorted({r.get("precision", "?") for r in results["rows"]}) or ["-"]
    asked = train.get("precision", "?")
    precision = f"precision {'/'.join(used)}" + (f" ({asked})" if asked not in used else "")
    return (f"Preset `{results['preset']}`: {train['epochs']} epochs, {subset}, {data['val']:,} validation, "
            f"{data['test']:,} test (scored once); width multiplier {recipe['model']['width_multiplier']}; "
            f"batch {train['batch_size']}, {train['optimizer']} lr {train['lr']} {train['schedule']}, "
            f"label smoothing {recipe['task']['label_smoothing']}; {precision}; device {', '.join(devices)}; "
            f"data {data['source']}. {TRAIN_ACC_NOTE}.")
