"""Shared figure style: one dpi, fixed sizes, readable fonts, and colours for many classes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure

from cnnlab.core.files import write_with

# Figures are saved at a fixed size (inches * DPI, no tight bounding box) so their pixel
# size is known in advance; constrained layout keeps labels inside that frame.
DPI = 100
FONT_SIZE = 10


def new_figure(width_in: float, height_in: float, nrows: int = 1, ncols: int = 1, **subplot_kw):
    """A (Figure, axes) pair with constrained layout; axes is a single Axes when 1x1."""
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=True, subplot_kw=subplot_kw or None)
    for ax in np.atleast_1d(axes).ravel():
        ax.tick_params(labelsize=FONT_SIZE - 1)
        ax.title.set_fontsize(FONT_SIZE + 1)
        ax.xaxis.label.set_fontsize(FONT_SIZE)
        ax.yaxis.label.set_fontsize(FONT_SIZE)
    return fig, axes


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save as PNG at `DPI` via a temporary file and rename, so a crash never leaves a
    truncated image that a later report would embed."""
    return write_with(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png", facecolor="white"), ".png")


def class_colors(n: int) -> np.ndarray:
    """n distinguishable RGBA colours: tab10 up to 10 classes, tab20 up to 20, the 60
    colours of tab20/tab20b/tab20c up to 60, then evenly spaced hues cycling through three
    saturation/value levels (hundreds of identities cannot all be told apart by colour;
    neighbours in the list at least differ)."""
    if n <= 0:
        return np.zeros((0, 4))
    if n <= 10:
        return np.asarray([(*c, 1.0) for c in colormaps["tab10"].colors[:n]])
    if n <= 20:
        return np.asarray([(*c, 1.0) for c in colormaps["tab20"].colors[:n]])
    if n <= 60:
        base = [c for name in ("tab20", "tab20b", "tab20c") for c in colormaps[name].colors]
        return np.asarray([(*c, 1.0) for c in base[:n]])
    hues = (np.arange(n) * 0.618033988749895) % 1.0  # golden-ratio steps spread hues apart
    levels = np.array([(0.85, 0.90), (0.55, 0.75), (0.95, 0.60)])[np.arange(n) % 3]
    rgb = hsv_to_rgb(np.column_stack([hues, levels]))
    return np.column_stack([rgb, np.ones(n)])
