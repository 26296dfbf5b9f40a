"""Decoding image files into uint8 arrays, with bad files reported by path, never fatal
unless asked (`strict`)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from cnnlab.errors import CnnlabError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp", ".gif"}


@dataclass
class DecodeReport:
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def summary(self) -> str:
        return f"{len(self.bad)} unreadable file(s) skipped" if self.bad else "all files decoded"


def open_rgb(path: str | Path) -> Image.Image:
    """Open fully (so truncation is caught now), honour EXIF orientation, convert to RGB
    (greyscale, RGBA, palette and CMYK alike)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return img.convert("RGB")


def decode_images(paths: Sequence[str | Path], transform: Callable[[Image.Image], Image.Image] | None,
                  size: tuple[int, int], strict: bool = False, progress: bool = False,
                  ) -> tuple[np.ndarray, np.ndarray, DecodeReport]:
    """Decode `paths` into an N x H x W x 3 uint8 array (`size` = (H, W) after `transform`).

    Returns (images, ok_index, report): ok_index are the positions in `paths` that decoded.
    A bad file is reported by path; with `strict` the first one raises before any training.
    """
    from cnnlab.progress import progress_bar

    report = DecodeReport()
    out = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    for i, p in enumerate(progress_bar(paths, desc="decode", enable=progress)):
        try:
            img = open_rgb(p)
            if transform is not None:
                img = transform(img)
            arr = np.asarray(img, dtype=np.uint8)
            if arr.shape != (size[0], size[1], 3):
                raise ValueError(f"decoded to shape {arr.shape}, expected {(size[0], size[1], 3)}")
            out[i] = arr
            ok[i] = True
        except Exception as exc:  # PIL raises many types for bad files; all mean "unreadable"
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
            if strict:
                raise CnnlabError(f"unreadable image {p}: {reason}") from None
            report.bad.append((str(p), reason))
    idx = np.flatnonzero(ok)
    # No bad files (the usual case): hand back the buffer itself rather than a full copy.
    return (out if idx.size == len(paths) else out[idx]), idx, report
