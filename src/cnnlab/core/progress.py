"""Progress of long work: a bar on a terminal, a plain line now and then in a log.

`progress_bar(iterable, enable, **tqdm_options)` is what every long loop of cnnlab uses:

    enable=False   nothing at all
    enable=True    the tqdm bar, whatever stderr is
    enable=None    the bar when stderr is a terminal; otherwise (`make demo > log 2>&1`, CI, a
                   pipe) a `PlainProgress`: one line every CNNLAB_PROGRESS_INTERVAL seconds
                   (default 30) and one when the work ends, saying what, how far, how fast
                   and how long. A bar's carriage returns make an unreadable log, and a log
                   with no line for minutes cannot be told apart from a hang.

Why not tqdm itself for logs: given a file (`file=`, `mininterval=`), tqdm still redraws one
bar with carriage returns and no newline (checked: five updates to a StringIO are one line of
'\r'-separated bars), so a log holds a single ever-growing line; `tests/test_progress.py` checks
that this is still so. A `PlainProgress` answers the parts of tqdm's interface that cnnlab's loops use (iteration,
`update`, `n`, `total`, `disable`, `set_postfix`, `set_postfix_str`, `set_description`,
`refresh`, `close`, use as a context manager), so callers need not know which one they got.
"""
from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO, TypeVar

from tqdm.auto import tqdm

from cnnlab.core.errors import CnnlabError

T = TypeVar("T")

INTERVAL_ENV = "CNNLAB_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0


def no_log(message: str) -> None:
    """The default `log` of library functions: they say nothing unless the caller (the CLI, the
    demo, a tuning worker's log file) passes where their lines go."""


def is_interactive() -> bool:
    try:
        return bool(sys.stderr is not None and sys.stderr.isatty())
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def progress_interval() -> float:
    """Seconds between two plain progress lines: CNNLAB_PROGRESS_INTERVAL, default 30."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise CnnlabError(f"{INTERVAL_ENV} must be a number of seconds >= 0, got {raw!r}")
    return value


def progress_bar(iterable: Iterable[T] | None = None, enable: bool | None = None,
                 **kwargs) -> tqdm | PlainProgress:
    """A tqdm bar, a `PlainProgress` or a silent tqdm, by `enable` (see the module docstring).
    `kwargs` are tqdm's (desc, total, unit, initial, ...)."""
    if os.environ.get("RANK", "0").strip() not in ("", "0"):
        enable = False  # under torchrun only rank 0 reports progress; the other ranks do the same work
    if enable is None:
        if is_interactive():
            enable = True
        elif sys.stderr is None and kwargs.get("file") is None:
            enable = False  # nowhere to write
        else:
            return PlainProgress(iterable, **kwargs)
    return tqdm(iterable, disable=not enable, dynamic_ncols=True, leave=False, **kwargs)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _rate(per_second: float, unit: str) -> str:
    if per_second >= 100:
        return f"{per_second:,.0f} {unit}/s"
    if per_second >= 1:
        return f"{per_second:.1f} {unit}/s"
    return f"{1 / per_second:,.1f} s/{unit}"  # slow work (trials, big batches) reads better per item


def _count(n: float) -> str:
    return f"{n:,}" if float(n).is_integer() else f"{n:,.1f}"


class PlainProgress:
    """Progress as plain lines: every `interval` seconds (CNNLAB_PROGRESS_INTERVAL when None)
    while the work goes on, checked whenever it advances, and once at its end:

        epoch 2/30: 120/391 batch (31%), 4.1 batch/s, 0:30 elapsed, 1:06 left, loss=1.234, img/s=2100
        cache frozen features: 13,233/13,233 img (100%), 88.0 img/s, done in 2:30

    The rate counts only the work done here (not `initial`). `clock` is for tests.
    Unknown tqdm options (leave, dynamic_ncols, ...) are accepted and ignored."""

    def __init__(self, iterable: Iterable | None = None, desc: str | None = None, total: float | None = None,
                 unit: str = "it", initial: float = 0, file: TextIO | None = None, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic, **_tqdm_options: Any):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable, self.desc, self.total, self.unit = iterable, desc or "", total, unit
        self.n = self.initial = initial
        self.disable = False
        self.interval = progress_interval() if interval is None else float(interval)
        self._file, self._clock = file, clock
        self._start = self._last_line = clock()
        self._postfix = ""
        self._closed = False

    # -- tqdm's interface
    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("PlainProgress without an iterable is advanced with update()")
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self) -> int:
        return int(self.total) if self.total is not None else len(self.iterable)  # type: ignore[arg-type]

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True  # the error's own message says what happened; no summary line

    def update(self, n: float = 1) -> None:
        self.n += n
        self._maybe_line()

    def refresh(self) -> None:
        self._maybe_line()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self._postfix = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self._postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._line(final=True)

    # -- the lines
    def _maybe_line(self) -> None:
        if not self._closed and self._clock() - self._last_line >= self.interval:
            self._line(final=False)

    def line(self, final: bool = False) -> str:
        """The progress line as it stands (what `close` writes when `final`)."""
        elapsed = max(self._clock() - self._start, 0.0)
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        if self.total:
            parts = [f"{_count(self.n)}/{_count(self.total)} {self.unit} ({100 * self.n / self.total:.0f}%)"]
        else:
            parts = [f"{_count(self.n)} {self.unit}"]
        if rate is not None:
            parts.append(_rate(rate, self.unit))
        parts.append(f"done in {_duration(elapsed)}" if final else f"{_duration(elapsed)} elapsed")
        if not final and rate is not None and self.total and self.n < self.total:
            parts.append(f"{_duration((self.total - self.n) / rate)} left")
        if self._postfix:
            parts.append(self._postfix)
        return (f"{self.desc}: " if self.desc else "") + ", ".join(parts)

    def _line(self, final: bool) -> None:
        self._last_line = self._clock()
        text = self.line(final)
        out = self._file if self._file is not None else sys.stderr
        if out is None:
            return
        # With `> log 2>&1`, the lines printed on stdout before this one come first in the log.
        if out is sys.stderr and sys.stdout is not None:
            try:
                sys.stdout.flush()
            except (OSError, ValueError):
                pass
        out.write(text + "\n")
        out.flush()
