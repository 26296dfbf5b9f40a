"""Figures drawn from files a run wrote; plotting never trains.

Uses matplotlib's object API (`matplotlib.figure.Figure`) and never pyplot, so no global
backend or figure state is touched and headless machines need no display.
"""
from cnnlab.reports.plots.common import DPI, class_colors, new_figure, save_figure

__all__ = ["DPI", "class_colors", "new_figure", "save_figure"]
