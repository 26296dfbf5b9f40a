"""Progress bars on long work, quiet when stderr is not a terminal (CI logs, pipes)."""
from __future__ import annotations

import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def is_interactive() -> bool:
    return sys.stderr.isatty()


def progress_bar(iterable: Iterable[T] | None = None, enable: bool | None = None, **kwargs) -> tqdm:
    """`enable=None` means: show only on a TTY."""
    if enable is None:
        enable = is_interactive()
    return tqdm(iterable, disable=not enable, dynamic_ncols=True, leave=False, **kwargs)
