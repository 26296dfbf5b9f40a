"""Part 1 figures: t-SNE of embeddings, normalised confusion matrices, training curves of
every block, and accuracy against size and training time. Inputs are arrays and records
read from run files; nothing here touches a model."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cnnlab.reports.plots.common import class_colors, new_figure, save_figure

# Fixed figure sizes in inches (pixels = inches * DPI); tests check the written sizes.
TSNE_SIZE = (8.0, 6.5)
CONFUSION_SIZE = (7.5, 6.5)
CURVES_SIZE = (12.0, 5.0)
SCATTER_SIZE = (12.0, 5.0)

_MARKERS = "osD^v<>pPhX*"


def _log_minor_label(value: float, _pos=None) -> str:
    """Label only the 2x and 5x minor ticks of a log axis: readable without crowding."""
    if value <= 0:
        return ""
    lead = value / 10 ** np.floor(np.log10(value) + 1e-9)
    return f"{value:g}" if round(lead, 6) in (2.0, 5.0) else ""


def _human(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def block_styles(blocks: Sequence[str]) -> dict[str, dict]:
    """One colour and marker per block, shared by every figure of a report."""
    colors = class_colors(len(blocks))
    return {b: {"color": colors[i], "marker": _MARKERS[i % len(_MARKERS)]} for i, b in enumerate(blocks)}


def plot_tsne(xy: np.ndarray, labels: np.ndarray, class_names: Sequence[str], path: str | Path,
              title: str) -> Path:
    fig, ax = new_figure(*TSNE_SIZE)
    colors = class_colors(len(class_names))
    for cls, name in enumerate(class_names):
        mask = labels == cls
        if mask.any():
            ax.scatter(xy[mask, 0], xy[mask, 1], s=6, color=colors[cls], label=name,
                       alpha=0.75, linewidths=0, rasterized=True)
    ax.set_title(title)
    # t-SNE axes have no units; ticks would suggest a scale that means nothing.
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ncol = 1 if len(class_names) <= 25 else 2
    if len(class_names) <= 60:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, markerscale=2.5,
                  frameon=False, ncol=ncol, title="class")
    return save_figure(fig, path)


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str | Path, title: str) -> Path:
    """Rows normalised to the true class (each row sums to 100%); cell text for up to 20
    classes, beyond that the colours alone."""
    cm = np.asarray(cm, dtype=np.float64)
    support = cm.sum(axis=1, keepdims=True)
    rates = np.divide(cm, support, out=np.zeros_like(cm), where=support > 0)
    fig, ax = new_figure(*CONFUSION_SIZE)
    im = ax.imshow(rates * 100, cmap="Blues", vmin=0, vmax=100)
    n = len(class_names)
    ax.set_xticks(range(n), labels=class_names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), labels=class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if n <= 20:
        size = 8 if n <= 12 else 6
        for t in range(n):
            for p in range(n):
                value = rates[t, p] * 100
                if value < 0.5 and t != p:
                    continue
                ax.text(p, t, f"{value:.0f}", ha="center", va="center", fontsize=size,
                        color="white" if value > 60 else "black")
    cbar = fig.colorbar(im, ax=ax, shrink=0.85)
    cbar.set_label("% of true class")
    return save_figure(fig, path)


def plot_training_curves(histories: Mapping[str, Sequence[Mapping]], path: str | Path,
                         styles: Mapping[str, dict] | None = None) -> Path:
    """Left: loss, right: accuracy; colour = block, solid = train, dashed = validation."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    styles = styles or block_styles(list(histories))
    fig, (ax_loss, ax_acc) = new_figure(*CURVES_SIZE, ncols=2)
    for block, records in histories.items():
        color = styles[block]["color"]
        epochs = [r["epoch"] for r in records]
        for key, ax, scale in (("loss", ax_loss, 1.0), ("acc", ax_acc, 100.0)):
            for split, style in (("train", "-"), ("val", "--")):
                values = [r.get(f"{split}_{key}") for r in records]
                pts = [(e, v * scale) for e, v in zip(epochs, values) if v is not None]
                if pts:
                    ax.plot(*zip(*pts), style, color=color, marker=".", markersize=4, linewidth=1.5)
    ax_loss.set_title("loss per epoch")
    ax_loss.set_ylabel("cross-entropy loss (log scale)")
    # Log scale: an early validation-loss spike (BatchNorm statistics lagging a high
    # learning rate) would otherwise flatten every other curve against the axis.
    ax_loss.set_yscale("log")
    ax_loss.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_loss.yaxis.set_minor_formatter(FuncFormatter(_log_minor_label))
    ax_acc.set_title("accuracy per epoch")
    ax_acc.set_ylabel("accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    block_handles = [Line2D([], [], color=styles[b]["color"], linewidth=2, label=b) for b in histories]
    split_handles = [Line2D([], [], color="0.3", linestyle="-", label="train"),
                     Line2D([], [], color="0.3", linestyle="--", label="validation")]
    ax_acc.legend(handles=block_handles + split_handles, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  frameon=False, fontsize=9, title="block")
    return save_figure(fig, path)


def plot_accuracy_params_time(rows: Sequence[Mapping], path: str | Path,
                              styles: Mapping[str, dict] | None = None,
                              accuracy_key: str = "test_acc") -> Path:
    """One point per block: accuracy against parameters (log scale) on the left and against
    training wall time on the right; marker and colour identify the block in one legend."""
    from matplotlib.ticker import FuncFormatter

    blocks = [r["block"] for r in rows]
    styles = styles or block_styles(blocks)
    label = {"test_acc": "test accuracy (%)", "val_acc": "validation accuracy (%)"}.get(accuracy_key, accuracy_key)
    fig, (ax_p, ax_t) = new_figure(*SCATTER_SIZE, ncols=2)
    for r in rows:
        acc = r.get(accuracy_key)
        if acc is None:
            continue
        style = styles[r["block"]]
        for ax, x in ((ax_p, r.get("params")), (ax_t, r.get("train_time_s"))):
            if x is not None:
                ax.scatter([x], [acc * 100], s=70, color=style["color"], marker=style["marker"],
                           edgecolors="black", linewidths=0.5, label=r["block"], zorder=3)
    # Linear axes with short tick labels (120k, 1.5M): a log axis over less than a decade,
    # as the six blocks span, gets crowded minor-tick labels.
    for ax in (ax_p, ax_t):
        ax.margins(x=0.12, y=0.15)
    ax_p.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _human(v)))
    ax_p.set_xlabel("parameters")
    ax_p.set_title(f"{label.split(' (')[0]} vs parameters")
    ax_t.set_xlabel("training wall time (s)")
    ax_t.set_title(f"{label.split(' (')[0]} vs training time")
    for ax in (ax_p, ax_t):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    handles, labels = ax_p.get_legend_handles_labels()
    if handles:
        ax_t.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
                    fontsize=9, title="block")
    return save_figure(fig, path)
