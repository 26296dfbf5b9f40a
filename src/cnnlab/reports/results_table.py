"""The results table of a CIFAR-10 comparison (results.md): every block's row beside the
reference report's figures, the reduced-budget caption, the recipe line. Written from
results.json, after each block (`cnnlab.pipelines.compare_blocks`), and printed by the CLI and
the demo; the comparison itself (`cnnlab.tasks.cifar.compare`) writes only data files."""
from __future__ import annotations

from pathlib import Path

from cnnlab.blocks.reference import REPORT_PARAMS, REPORT_TRAIN_ACC, REPORT_TRAIN_TIME_S, REPORT_VAL_ACC
from cnnlab.core.files import atomic_write_text
from cnnlab.metrics.classification import TRAIN_ACC_NOTE
from cnnlab.reports.text import budget_caption, minutes, reference_note

RESULTS_MD = "results.md"


def write_results_markdown(results: dict, out: str | Path) -> Path:
    return atomic_write_text(Path(out) / RESULTS_MD, results_markdown(results))


def results_markdown(results: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{x:.2%}"

    lines = ["| block | params | report params | MACs/image | val acc | report val acc | test acc | train acc "
             "| report train acc | train time (s) | report train time | images/s | device |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results["rows"]:
        b = r["block"]
        ref_params = REPORT_PARAMS.get(b)
        lines.append(f"| {b} | {r['params']:,} | {'-' if ref_params is None else f'{ref_params:,}'} | "
                     f"{r['macs'] / 1e6:,.1f}M | {r['val_acc']:.2%} | {pct(REPORT_VAL_ACC.get(b))} | "
                     f"{r['test_acc']:.2%} | {r['train_acc']:.2%} | {pct(REPORT_TRAIN_ACC.get(b))} | "
                     f"{r['train_time_s']:.1f} | {minutes(REPORT_TRAIN_TIME_S.get(b))} | "
                     f"{r['images_per_s']:,.0f} | {r['device']} |")
    caption = budget_caption(results["recipe"], results["data"])
    return ("\n".join(lines) + "\n\n" + (f"**{caption}**\n\n" if caption else "") + reference_note() + "\n\n"
            + recipe_line(results) + "\n")


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
