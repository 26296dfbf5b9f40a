"""`cnnlab report RUN_DIR`: the readable record of a `cifar compare` run.

Reads only what the run wrote (results.json, each block's metrics.jsonl, config.yaml,
environment.json and embeddings_test.npz) and writes, inside RUN_DIR:

    figures/training_curves.png          loss and accuracy per epoch, every block
    figures/accuracy_params_time.png     accuracy vs parameters and vs training time
    figures/tsne_<block>.png             t-SNE of the test embeddings, per block
    figures/confusion_<block>.png        row-normalised confusion matrix, per block
    analysis.json / analysis.csv         silhouette, k-NN accuracy, confused pairs, shared confusions,
                                         the reference report's claims checked (`reports.claims`)
    report.md                            the report, figures linked
    report.html                          the same, self-contained (figures as data URIs)

The slow part (t-SNE) is cached per block in RUN_DIR/.analysis_cache, keyed by the
embeddings file's size and modification time and the analysis settings.
"""
from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import atomic_write_text, save_npz_atomic, write_json
from cnnlab.core.progress import progress_bar
from cnnlab.metrics.classification import pair_rate
from cnnlab.reports.analysis import EMBEDDINGS_FILE, analyse_embeddings
from cnnlab.reports.claims import check_claims
from cnnlab.reports.document import render_html, render_markdown
from cnnlab.reports.results_table import results_table

FIGURES_DIR = "figures"
CACHE_DIR = ".analysis_cache"
CURVES_FIGURE = "training_curves.png"
SCATTER_FIGURE = "accuracy_params_time.png"


def tsne_figure(block: str) -> str:
    return f"tsne_{_safe(block)}.png"


def confusion_figure(block: str) -> str:
    return f"confusion_{_safe(block)}.png"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# ---------------------------------------------------------------- reading the run


def load_results(out_dir: str | Path) -> dict:
    out = Path(out_dir)
    if not out.is_dir():
        raise CnnlabError(f"run directory not found: {out}")
    path = out / "results.json"
    if not path.is_file():
        raise CnnlabError(f"{out} has no results.json; point at the --out folder of `cnnlab cifar compare`")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CnnlabError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
        raise CnnlabError(f"{path} has no 'rows' list; is it a cifar compare results file?")
    return results


def load_metrics(path: Path) -> list[dict]:
    """Per-epoch records of a metrics.jsonl; a missing file is an empty history."""
    if not path.is_file():
        return []
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise CnnlabError(f"{path}:{lineno} is not valid JSON: {exc.msg}") from None
    return records


def _block_dirs(out: Path, rows: list[dict]) -> dict[str, Path]:
    """Blocks in table order, then any other sub-folder holding embeddings (a run that
    stopped before writing its row still gets analysed)."""
    dirs = {r["block"]: out / str(r.get("run_dir") or r["block"]) for r in rows}
    for sub in sorted(p for p in out.iterdir() if p.is_dir() and (p / EMBEDDINGS_FILE).is_file()):
        if sub not in dirs.values() and sub.name not in dirs:
            dirs[sub.name] = sub
    return dirs


# ---------------------------------------------------------------- analysis with cache


def _cached_analysis(block: str, npz: Path, cache_dir: Path, settings: dict) -> tuple[dict, bool]:
    stat = npz.stat()
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, **settings}
    meta_path = cache_dir / f"{_safe(block)}.json"
    tsne_path = cache_dir / f"{_safe(block)}_tsne.npz"
    if meta_path.is_file():
        try:
            cached = json.loads(meta_path.read_text())
            if cached.get("key") == key:
                result = cached["analysis"]
                if settings["tsne_points"] > 0:
                    with np.load(tsne_path, allow_pickle=False) as data:
                        result["tsne"] = {"xy": data["xy"], "labels": data["labels"]}
                return result, True
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is recomputed, never trusted
    result = analyse_embeddings(npz, **settings)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if "tsne" in result:
        save_npz_atomic(tsne_path, {"xy": result["tsne"]["xy"], "labels": result["tsne"]["labels"]})
    plain = {k: v for k, v in result.items() if k != "tsne"}
    atomic_write_text(meta_path, json.dumps({"key": key, "analysis": plain}))
    return result, False


def shared_confusions(analyses: dict[str, dict]) -> list[dict]:
    """Every pair that is in some model's top-k, with the models that list it and its
    confusion rate in every model (from the full matrices, so absent-from-top-k still
    counts), sorted by how many models list it, then by mean rate."""
    pairs: dict[tuple[str, str], list[str]] = {}
    for block, a in analyses.items():
        for p in a["top_confused_pairs"]:
            pairs.setdefault((p["a"], p["b"]), []).append(block)
    shared = []
    for (a_name, b_name), blocks in pairs.items():
        rates = {}
        for block, a in analyses.items():
            names = a["class_names"]
            if a_name in names and b_name in names:
                rates[block] = pair_rate(np.asarray(a["confusion_matrix"]), names.index(a_name), names.index(b_name))
        shared.append({"a": a_name, "b": b_name, "in_top_k_of": blocks, "n_models": len(blocks),
                       "all_models": len(blocks) == len(analyses),
                       "rate_per_model": rates, "mean_rate": float(np.mean(list(rates.values())))})
    shared.sort(key=lambda s: (-s["n_models"], -s["mean_rate"]))
    return shared


# ---------------------------------------------------------------- document model
# A report is a list of elements rendered twice (`cnnlab.reports.document`), as Markdown and as
# HTML, so the two never drift apart.


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * float(x):.2f}"


def _build_document(out: Path, results: dict, analyses: dict[str, dict], shared: list[dict],
                    figures: dict[str, str], block_dirs: dict[str, Path], missing: list[str],
                    claims: list[dict]) -> list[tuple]:
    doc: list[tuple] = [("h", 1, "cnnlab: CIFAR-10 block comparison")]
    doc.append(("p", f"Run folder: {out.resolve()}. Preset: {results.get('preset', '-')}. "
                     f"Report written {time.strftime('%Y-%m-%d %H:%M:%S')}."))
    doc.append(("h", 2, "Results"))
    from cnnlab.reports.text import reference_note
    doc.append(("p", "MACs per 32x32 image, training images/s over the whole training run. " + reference_note()))
    doc.append(("table", *results_table(results["rows"])))
    from cnnlab.reports.text import budget_caption
    caption = budget_caption(results.get("recipe", {}), results.get("data", {}))
    if caption:
        doc.append(("p", caption))

    doc.append(("h", 2, "How well each embedding separates the classes"))
    if analyses:
        any_a = next(iter(analyses.values()))["settings"]
        doc.append(("p", "Measured on the full test-set embeddings (forward_features, dimension in the "
                         "table), not on the 2-D t-SNE picture. Silhouette: cosine distance, "
                         f"a seeded sample of up to {any_a['silhouette_sample']:,} points, range -1..1 (higher = "
                         f"tighter, better separated classes). k-NN accuracy: k={any_a['knn_k']}, cosine, "
                         f"{any_a['knn_folds']}-fold cross-validated within the test embeddings."))
        doc.append(("table", ["block", "test acc % (logits)", "silhouette", "k-NN acc %", "embedding dim"],
                    [[b, _pct(a["accuracy"]), f"{a['silhouette']:.3f}", _pct(a["knn_accuracy"]), str(a["dim"])]
                     for b, a in analyses.items()]))
    if missing:
        doc.append(("p", "No embeddings_test.npz (not analysed): " + ", ".join(missing) + "."))

    if analyses:
        doc.append(("h", 2, "Confused class pairs"))
        doc.append(("p", "Pairs are unordered: 'a <-> b' counts a predicted as b plus b predicted as a; "
                         "rate = that count / test images of a and b."))
        everyone = [s for s in shared if s["all_models"]]
        if len(analyses) > 1:
            if everyone:
                doc.append(("p", "Shared by all models (in every model's top-"
                                 f"{next(iter(analyses.values()))['settings']['top_k']}): "
                                 + "; ".join(f"{s['a']} <-> {s['b']} (mean rate {_pct(s['mean_rate'])}%)"
                                             for s in everyone) + "."))
            else:
                doc.append(("p", "No confused pair is in the top list of every model."))
            doc.append(("table", ["pair", "models listing it", "mean rate %"] + list(analyses),
                        [[f"{s['a']} <-> {s['b']}", str(s["n_models"]), _pct(s["mean_rate"])]
                         + [_pct(s["rate_per_model"].get(b)) for b in analyses] for s in shared]))
        top_k = max(len(a["top_confused_pairs"]) for a in analyses.values())
        doc.append(("p", "Most confused pairs per block, as 'a <-> b: count (a as b / b as a), rate'."))
        doc.append(("table", ["block"] + [f"#{i + 1}" for i in range(top_k)],
                    [[b] + [f"{p['a']} <-> {p['b']}: {p['count']} ({p['a_as_b']}/{p['b_as_a']}), {_pct(p['rate'])}%"
                            for p in a["top_confused_pairs"]] + [""] * (top_k - len(a["top_confused_pairs"]))
                     for b, a in analyses.items()]))

    doc.append(("h", 2, "The reference report's findings, checked"))
    doc.append(("p", "Each claim of the report's Part 1 against this run's numbers; judged only once every block the "
                     "report trained is in the run."))
    doc.append(("table", ["claim", "verdict", "finding"], [[c["claim"], c["verdict"], c["finding"]] for c in claims]))

    doc.append(("h", 2, "Figures"))
    if CURVES_FIGURE in figures.values():
        doc.append(("img", f"{FIGURES_DIR}/{CURVES_FIGURE}",
                    "Training curves: solid = train, dashed = validation, one colour per block."))
    if SCATTER_FIGURE in figures.values():
        doc.append(("img", f"{FIGURES_DIR}/{SCATTER_FIGURE}", "Accuracy against parameters and training time."))
    for block in analyses:
        doc.append(("h", 3, f"Block {block}"))
        doc.append(("imgrow", [(f"{FIGURES_DIR}/{tsne_figure(block)}", f"t-SNE of block {block}'s test embeddings"),
                               (f"{FIGURES_DIR}/{confusion_figure(block)}", f"Confusion matrix of block {block}")]))

    doc.append(("h", 2, "Configuration"))
    for key in ("recipe", "data"):
        if results.get(key):
            doc.append(("h", 3, key.capitalize()))
            doc.append(("pre", yaml.safe_dump(results[key], sort_keys=False, default_flow_style=None).strip()))
    for block, d in block_dirs.items():
        cfg = d / "config.yaml"
        if cfg.is_file():
            doc.append(("details", f"Resolved config of block {block} ({cfg.relative_to(out)})",
                        cfg.read_text().strip()))

    doc.append(("h", 2, "Environment"))
    env = results.get("environment")
    if not env:
        for d in block_dirs.values():
            if (d / "environment.json").is_file():
                env = json.loads((d / "environment.json").read_text())
                break
    doc.append(("pre", yaml.safe_dump(env or {}, sort_keys=False, default_flow_style=None).strip() or "(not recorded)"))
    return doc


# ---------------------------------------------------------------- entry point


def _write_csv(path: Path, analyses: dict[str, dict]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["block", "n", "dim", "accuracy", "silhouette", "knn_accuracy", "knn_k", "top_confused_pairs"])
    for block, a in analyses.items():
        pairs = "; ".join(f"{p['a']}<->{p['b']} ({p['count']})" for p in a["top_confused_pairs"])
        writer.writerow([block, a["n"], a["dim"], f"{a['accuracy']:.6f}", f"{a['silhouette']:.6f}",
                         f"{a['knn_accuracy']:.6f}", a["settings"]["knn_k"], pairs])
    atomic_write_text(path, buf.getvalue())


def write_report(out_dir: str | Path, *, tsne_points: int = 2000, seed: int = 0, knn_k: int = 5,
                 silhouette_sample: int = 5000, top_k: int = 5, progress: bool | None = None) -> Path:
    """Analyse every block of a `cifar compare` run folder and write the figures,
    analysis.json/csv, report.md and a self-contained report.html; returns report.html.

    `tsne_points` bounds the t-SNE sample per block, the slow step (its time: docs/report.md);
    lower it for a faster report.
    """
    if tsne_points < 0 or knn_k < 1 or top_k < 1 or silhouette_sample < 2:
        raise CnnlabError("tsne_points must be >= 0, knn_k and top_k >= 1, silhouette_sample >= 2")
    out = Path(out_dir)
    results = load_results(out)
    rows = results["rows"]
    block_dirs = _block_dirs(out, rows)
    fig_dir = out / FIGURES_DIR
    settings = {"tsne_points": tsne_points, "seed": seed, "knn_k": knn_k,
                "silhouette_sample": silhouette_sample, "top_k": top_k}

    from cnnlab.reports.plots.cifar import (
        block_styles,
        plot_accuracy_params_time,
        plot_confusion,
        plot_training_curves,
        plot_tsne,
    )

    styles = block_styles(list(block_dirs))
    analyses: dict[str, dict] = {}
    missing = []
    figures: dict[str, str] = {}
    cache_hits = {}
    for block, d in progress_bar(block_dirs.items(), enable=progress, desc="analysing", total=len(block_dirs)):
        npz = d / EMBEDDINGS_FILE
        if not npz.is_file():
            missing.append(block)
            continue
        try:
            result, cache_hits[block] = _cached_analysis(block, npz, out / CACHE_DIR, settings)
        except ValueError as exc:  # e.g. a test set holding one class: no silhouette exists
            raise CnnlabError(f"cannot analyse {npz}: {exc}") from None
        names = result["class_names"]
        if "tsne" in result:
            plot_tsne(result["tsne"]["xy"], result["tsne"]["labels"], names, fig_dir / tsne_figure(block),
                      f"Block {block}: t-SNE of {len(result['tsne']['xy']):,} test embeddings\n"
                      f"silhouette {result['silhouette']:.3f}, {knn_k}-NN accuracy {100 * result['knn_accuracy']:.1f}%")
            figures[f"tsne_{block}"] = tsne_figure(block)
        plot_confusion(np.asarray(result["confusion_matrix"]), names, fig_dir / confusion_figure(block),
                       f"Block {block}: confusion matrix (test accuracy {100 * result['accuracy']:.2f}%)")
        figures[f"confusion_{block}"] = confusion_figure(block)
        analyses[block] = {k: v for k, v in result.items() if k != "tsne"}

    histories = {b: load_metrics(d / "metrics.jsonl") for b, d in block_dirs.items()}
    histories = {b: h for b, h in histories.items() if h}
    if histories:
        plot_training_curves(histories, fig_dir / CURVES_FIGURE, styles)
        figures["training_curves"] = CURVES_FIGURE
    if rows:
        acc_key = "test_acc" if any(r.get("test_acc") is not None for r in rows) else "val_acc"
        plot_accuracy_params_time(rows, fig_dir / SCATTER_FIGURE, styles, accuracy_key=acc_key)
        figures["accuracy_params_time"] = SCATTER_FIGURE

    shared = shared_confusions(analyses) if analyses else []
    claims = check_claims(rows, analyses)
    summary = {"settings": {**settings, "metric": "cosine"}, "blocks": analyses, "shared_confusions": shared,
               "claims": claims, "not_analysed": missing, "cache_hits": cache_hits,
               "figures": {k: f"{FIGURES_DIR}/{v}" for k, v in figures.items()}}
    write_json(out / "analysis.json", summary)
    _write_csv(out / "analysis.csv", analyses)

    doc = _build_document(out, results, analyses, shared, figures, block_dirs, missing, claims)
    atomic_write_text(out / "report.md", render_markdown(doc))
    html_path = out / "report.html"
    atomic_write_text(html_path, render_html(doc, out))
    return html_path
