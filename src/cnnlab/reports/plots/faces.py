"""Part 2 figures for face verification: distances of the DevTest pairs (same vs different,
with the calibrated threshold), ROC curves, a nearest-neighbour retrieval grid and a t-SNE
(van der Maaten and Hinton 2008) of test embeddings. Inputs are the files a training run wrote
(`devtest_pairs.npz`, `test_embeddings.npz`, `metrics.json`) and, for the grid's thumbnails,
the image files they name; nothing here touches a model or a data set loader."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import load_yaml, read_json
from cnnlab.core.progress import progress_bar
from cnnlab.metrics.retrieval import nearest_neighbours
from cnnlab.reports.plots.common import class_colors, new_figure, save_figure

BOX_SIZE = (6.0, 5.0)
ROC_SIZE = (11.0, 4.8)
TSNE_SIZE = (9.0, 6.5)
THUMB_IN = 1.15          # inches per thumbnail in the retrieval grid
SAME_COLOR = "#2a9d3c"
DIFF_COLOR = "#d62728"


def _load_run(run_dir: Path) -> tuple[dict, dict, dict]:
    try:
        metrics = read_json(run_dir / "metrics.json")
        with np.load(run_dir / "devtest_pairs.npz") as p:
            pairs = {k: p[k] for k in p.files}
        with np.load(run_dir / "test_embeddings.npz") as e:
            emb = {k: e[k] for k in e.files}
    except (OSError, ValueError, KeyError) as exc:
        raise CnnlabError(f"{run_dir} does not hold a tested face run: {exc}") from None
    return metrics, pairs, emb


# ---------------------------------------------------------------------------- drawing on axes
def draw_distance_boxes(ax, distances: np.ndarray, same: np.ndarray, threshold: float, title: str) -> None:
    same = same.astype(bool)
    groups = [distances[same], distances[~same]]
    box = ax.boxplot(groups, widths=0.5, patch_artist=True, showfliers=False)
    ax.set_xticks([1, 2], [f"same person\n(n={same.sum()})", f"different people\n(n={(~same).sum()})"])
    for patch, color in zip(box["boxes"], (SAME_COLOR, DIFF_COLOR)):
        patch.set_facecolor(color)
        patch.set_alpha(0.35)
    rng = np.random.default_rng(0)
    for k, (values, color) in enumerate(zip(groups, (SAME_COLOR, DIFF_COLOR)), start=1):
        ax.scatter(k + rng.uniform(-0.18, 0.18, len(values)), values, s=5, color=color, alpha=0.45, linewidths=0)
    ax.axhline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.3f}")
    ax.set_ylabel("embedding distance")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def draw_tsne(ax, embeddings: np.ndarray, labels: np.ndarray, people: Sequence[str], top: int, title: str,
              seed: int = 0) -> None:
    from cnnlab.reports.analysis import tsne_2d
    counts = np.bincount(labels, minlength=len(people))
    chosen = np.argsort(-counts, kind="stable")[:top]
    chosen = chosen[counts[chosen] > 0]
    mask = np.isin(labels, chosen)
    xy, lab = tsne_2d(embeddings[mask], labels[mask], n_points=int(mask.sum()), seed=seed)
    colors = class_colors(len(chosen))
    for c, person in enumerate(chosen):
        sel = lab == person
        ax.scatter(xy[sel, 0], xy[sel, 1], s=16, color=colors[c], label=f"{people[person]} ({counts[person]})",
                   alpha=0.85, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)


def draw_roc(ax_lin, ax_log, distances: np.ndarray, same: np.ndarray, label: str, color=None) -> None:
    from cnnlab.metrics.verification import auc, roc_curve
    far, tar, _ = roc_curve(distances, same)
    text = f"{label} (AUC {auc(distances, same):.4f})"
    ax_lin.plot(far, tar, label=text, color=color, linewidth=1.6)
    ax_log.plot(np.maximum(far, 1e-4), tar, label=text, color=color, linewidth=1.6)


def _finish_roc(ax_lin, ax_log, n_different: int) -> None:
    ax_lin.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax_lin.set_xlabel("false accept rate")
    ax_lin.set_ylabel("true accept rate")
    ax_lin.set_title("ROC")
    ax_lin.legend(loc="lower right", fontsize=9)
    ax_log.set_xscale("log")
    ax_log.set_xlim(max(1.0 / max(n_different, 1), 1e-4) * 0.8, 1.0)
    for far in (1e-2, 1e-3):
        ax_log.axvline(far, color="grey", linestyle=":", linewidth=1)
    ax_log.set_xlabel("false accept rate (log)")
    ax_log.set_ylabel("true accept rate")
    ax_log.set_title("ROC, low false accept rates")
    for ax in (ax_lin, ax_log):
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1.01)


# ---------------------------------------------------------------------------- one run
def plot_distance_boxplot(distances, same, threshold: float, path, title: str) -> Path:
    fig, ax = new_figure(*BOX_SIZE)
    draw_distance_boxes(ax, np.asarray(distances), np.asarray(same), threshold, title)
    return save_figure(fig, path)


def plot_roc(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path) -> Path:
    """`curves`: (label, distances, same) per model; all on one pair of axes."""
    fig, (ax_lin, ax_log) = new_figure(*ROC_SIZE, ncols=2)
    colors = class_colors(max(len(curves), 1))
    for k, (label, d, s) in enumerate(curves):
        draw_roc(ax_lin, ax_log, np.asarray(d), np.asarray(s), label, colors[k])
    _finish_roc(ax_lin, ax_log, int(min((~np.asarray(s, bool)).sum() for _, _, s in curves)))
    return save_figure(fig, path)


def plot_tsne(embeddings, labels, people, path, title: str, top: int = 10) -> Path:
    fig, ax = new_figure(*TSNE_SIZE)
    draw_tsne(ax, np.asarray(embeddings), np.asarray(labels), list(people), top, title)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False, title="person (images)")
    return save_figure(fig, path)


def retrieval_examples(embeddings: np.ndarray, labels: np.ndarray, distance: str, n_queries: int, k: int,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(queries, neighbours Q x k, distances Q x k): random queries among images whose person
    has another test image, each query's k nearest other test images."""
    counts = np.bincount(labels)
    eligible = np.flatnonzero(counts[labels] >= 2)
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(eligible, min(n_queries, len(eligible)), replace=False))
    z = np.asarray(embeddings, np.float32)
    values, idx = nearest_neighbours(z[queries], z, min(k, len(labels) - 1), distance, query_rows=queries)
    return queries, idx.numpy(), values.numpy()


def plot_retrieval_grid(embeddings, labels, people, paths, root, path, *, distance: str = "euclidean",
                        n_queries: int = 6, k: int = 5, seed: int = 0) -> Path:
    """Each row: a random test query, then its k nearest test images (other images only),
    framed green when the same person, red otherwise."""
    labels = np.asarray(labels)
    queries, neighbours, dists = retrieval_examples(embeddings, labels, distance, n_queries, k, seed)
    rows, cols = len(queries), neighbours.shape[1] + 1
    fig, axes = new_figure(THUMB_IN * cols + 0.4, THUMB_IN * rows * 1.18 + 0.5, nrows=rows, ncols=cols)
    axes = np.atleast_2d(axes)

    def show(ax, index, frame, caption):
        ax.imshow(_thumbnail(Path(str(root)) / str(paths[index])))
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(frame)
            spine.set_linewidth(4 if frame != "black" else 1.5)
        ax.set_xlabel(caption, fontsize=7, labelpad=2)

    for r, q in enumerate(queries):
        show(axes[r, 0], q, "black", _short(people[labels[q]]))
        for c, (n, dv) in enumerate(zip(neighbours[r], dists[r]), start=1):
            ok = labels[n] == labels[q]
            show(axes[r, c], n, SAME_COLOR if ok else DIFF_COLOR, f"{_short(people[labels[n]])}\nd={dv:.2f}")
    axes[0, 0].set_title("query", fontsize=9)
    for c in range(1, cols):
        axes[0, c].set_title(f"#{c}", fontsize=9)
    fig.suptitle("Nearest test images (green: same person, red: another person)", fontsize=10)
    return save_figure(fig, path)


def _thumbnail(path: Path, side: int = 96) -> np.ndarray:
    """The image file a run's test embeddings name, upright and RGB, at most side x side."""
    from PIL import Image, ImageOps
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img).convert("RGB")
    img.thumbnail((side, side))
    return np.asarray(img)


def _short(name: str, width: int = 16) -> str:
    name = str(name).replace("_", " ")
    return name if len(name) <= width else name[: width - 1] + "."


def plot_run(run_dir: str | Path, progress: bool | None = False) -> list[Path]:
    """The four figures of a tested run, written beside its files, under a progress bar counted
    in figures (`progress` as `progress_bar`'s `enable`; the t-SNE takes seconds to a minute)."""
    run_dir = Path(run_dir)
    metrics, pairs, emb = _load_run(run_dir)
    test = metrics["test"]
    distance = _distance_of(run_dir)
    d, same, threshold = pairs["distances"], pairs["same"].astype(bool), float(pairs["threshold"])
    figures = [
        lambda: plot_distance_boxplot(d, same, threshold, run_dir / "distances_boxplot.png",
                                      f"DevTest pairs: accuracy {test['accuracy']:.1%} at the calibrated threshold"),
        lambda: plot_roc([("DevTest", d, same)], run_dir / "roc.png"),
        lambda: plot_retrieval_grid(emb["embeddings"], emb["labels"], emb["people"], emb["paths"], emb["root"],
                                    run_dir / "retrieval.png", distance=distance),
        lambda: plot_tsne(emb["embeddings"], emb["labels"], emb["people"], run_dir / "tsne.png",
                          "t-SNE of test embeddings: the 10 test people with the most images")]
    return [draw() for draw in progress_bar(figures, enable=progress, desc="figures", unit="figure")]


def _distance_of(run_dir: Path) -> str:
    path = run_dir / "faces_config.yaml"
    if path.is_file():
        return (load_yaml(path) or {}).get("distance", "euclidean")
    return "euclidean"


# ---------------------------------------------------------------------------- comparison
def plot_margin_comparison(run_dirs: Sequence[Path], names: Sequence[str], out_dir: str | Path) -> list[Path]:
    """Side by side: distance box plots (one panel per run, shared y axis), t-SNE of the same
    people per run, and all ROC curves on one pair of axes."""
    out_dir = Path(out_dir)
    loaded = [_load_run(Path(r)) for r in run_dirs]
    n = len(loaded)
    fig, axes = new_figure(4.6 * n, 5.0, ncols=n)
    top = max(float(p["distances"].max()) for _, p, _ in loaded) * 1.05
    for ax, name, (metrics, pairs, _) in zip(np.atleast_1d(axes), names, loaded):
        draw_distance_boxes(ax, pairs["distances"], pairs["same"], float(pairs["threshold"]),
                            f"{name}: acc {metrics['test']['accuracy']:.1%}")
        ax.set_ylim(0, top)  # one scale for every panel, so the margins compare by eye
    boxes = save_figure(fig, out_dir / "margins_boxplots.png")

    fig, axes = new_figure(6.0 * n, 5.6, ncols=n)
    for ax, name, (_, _, emb) in zip(np.atleast_1d(axes), names, loaded):
        draw_tsne(ax, emb["embeddings"], emb["labels"], list(emb["people"]), 10, name)
    first = np.atleast_1d(axes)[0]
    handles, labels = first.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=5, fontsize=8, frameon=False)
    tsne = save_figure(fig, out_dir / "margins_tsne.png")

    roc = plot_roc([(name, p["distances"], p["same"].astype(bool)) for name, (_, p, _) in zip(names, loaded)],
                   out_dir / "margins_roc.png")
    return [boxes, tsne, roc]
