"""The one image decoder: files -> 8-bit RGB uint8 arrays, for CIFAR folders, face folders,
galleries and `faces verify` alike, with every file that cannot be decoded named in one
`DecodeReport` (never fatal unless asked: `strict`).

Pixel modes are converted by what their values mean, not by Pillow's `convert("RGB")` alone,
which clips 16-bit values to 255 (a 16-bit PNG came out all white):
- 16-bit greyscale (`I;16*`) and `I` (Pillow's 16-bit PGM) are scaled by 255/65535 (= 1/257),
  so a 16-bit copy of an 8-bit image (v * 257) decodes to exactly the same pixels. An `I`
  value outside 0..65535 has no known bit depth: the file is reported, not guessed at.
- `F` (floating-point) pixels within 0..1 are scaled by 255; any other range is reported.
- Transparency (`LA`, `PA`, `RGBA`, a palette or greyscale with a transparent colour) is
  flattened onto black (each colour weighted by its alpha), so what lies under a transparent
  pixel never leaks in; fully opaque images are unchanged.
- Everything else (`1`, `L`, `P`, `CMYK`, `YCbCr`, 16-bit RGB which Pillow reads as 8-bit)
  goes through `convert("RGB")`.

Formats: whatever Pillow reads, plus HEIC/HEIF (the iPhone's default photo format) through the
`pillow-heif` plugin, registered once when this module is imported. AVIF is Pillow's own
(`PIL.features.check("avif")`; recent wheels have it); where Pillow lacks it, an .avif file is
reported as unreadable, never skipped without a word. HEIF's rotation is applied by libheif,
which then resets the EXIF orientation, so `exif_transpose` does not turn such a photo twice.
"""
from __future__ import annotations

import errno
import os
import stat
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import write_json

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp", ".gif",
                    ".heic", ".heif", ".hif", ".avif"}
pillow_heif.register_heif_opener()  # once, here, where every image cnnlab reads is opened
# Part of every cache key built from decoded pixels: bump when decoding changes any pixel,
# so no loader (CIFAR or faces) reuses pixels an older decoder produced.
DECODER_VERSION = 2
# Where a run folder lists every file that was skipped (written by `DecodeReport.write`).
BAD_FILES_NAME = "bad_files.json"
# How many bad files a screen summary names before "... and N more".
PREVIEW_LIMIT = 5
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}


class UnreadableImage(Exception):
    """Raised inside the decoder for a file it refuses; its message is the reason shown."""


class TooManyPixels(UnreadableImage):
    """The header claims more pixels than the caller's limit allows."""


@dataclass
class DecodeReport:
    """Files that could not be decoded, as (path, reason) in the order they were tried; `total`
    is how many files were tried. CIFAR and faces share it: one screen summary, one file."""
    bad: list[tuple[str, str]] = field(default_factory=list)
    total: int = 0
    # Files that decoded, but not as asked: (path, what was done instead), e.g. no face was
    # found so the centre crop was used. Listed beside the bad files, never silently.
    fallback: list[tuple[str, str]] = field(default_factory=list)
    # The paths among `bad` that decoded but that `transform` refused (a face step that found no
    # face): readable images, which a caller may count apart from files that cannot be decoded.
    refused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{len(self.bad)} unreadable file(s) skipped" if self.bad else "all files decoded"
        if self.fallback:
            text += f"; {len(self.fallback)} with a fallback ({self.fallback[0][1]}, ...)"
        return text

    def preview(self, limit: int = PREVIEW_LIMIT, listed_in: str | Path | None = None) -> list[str]:
        """Screen lines: the first `limit` bad files, then how many more and, given
        `listed_in` (the file `write` made), where all of them are: a long list never floods
        the screen, and none goes unrecorded."""
        lines = [f"skipped {path}: {reason}" for path, reason in self.bad[:limit]]
        if len(self.bad) > limit:
            lines.append(f"... and {len(self.bad) - limit} more unreadable file(s)"
                         + (f"; all {len(self.bad)} are listed in {listed_in}" if listed_in else ""))
        return lines

    def to_dict(self) -> dict:
        return {"skipped": len(self.bad), "tried": self.total,
                "files": [{"path": path, "reason": reason} for path, reason in self.bad],
                "fallback": [{"path": path, "note": note} for path, note in self.fallback]}

    def write(self, folder: str | Path) -> Path | None:
        """Write every bad file to `folder/bad_files.json`; with none, remove a list an earlier
        run left there (so the folder never names files that have since been fixed)."""
        path = Path(folder) / BAD_FILES_NAME
        if not self.bad and not self.fallback:
            path.unlink(missing_ok=True)
            return None
        write_json(path, self.to_dict())
        return path


# ---------------------------------------------------------------------------- listing files

def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symlink loop or an unreadable link is not a folder to descend into
        return False


def list_folders(folder: str | Path) -> list[str]:
    """Names of the non-hidden sub-folders of `folder`, sorted."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and _is_dir(e))


def list_images(folder: str | Path) -> list[Path]:
    """Non-hidden entries of `folder` with an image extension that are not folders, sorted by
    name. Broken links, symlink loops and the like are listed on purpose: the decoder then
    names them in the report instead of their vanishing silently."""
    folder = Path(folder)
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if not e.name.startswith(".")
                       and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and not _is_dir(e))
    return [folder / n for n in names]


def is_image_name(path: str | Path) -> bool:
    """Whether the file's extension is one of IMAGE_EXTENSIONS (any case)."""
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


def walk_files(folder: str | Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(every non-hidden file under `folder` at any depth, sorted by path; [(folder, reason)] of
    sub-folders that could not be listed). Hidden files and folders (".DS_Store", ".thumbnails")
    are not looked at. A linked folder is followed, each folder at most once (a link loop ends).
    Broken links and the like are listed as files, as in `list_images`."""
    files: list[Path] = []
    unlisted: list[tuple[Path, str]] = []
    visited: set[tuple[int, int]] = set()
    stack = [Path(folder)]
    while stack:
        current = stack.pop()
        try:
            st = os.stat(current)
            if (st.st_dev, st.st_ino) in visited:
                continue
            visited.add((st.st_dev, st.st_ino))
            with os.scandir(current) as it:
                entries = sorted((e.name, _is_dir(e)) for e in it if not e.name.startswith("."))
        except OSError as exc:
            if current == Path(folder):
                raise
            unlisted.append((current, f"folder cannot be read ({exc.strerror or type(exc).__name__})"))
            continue
        files += [current / name for name, is_dir in entries if not is_dir]
        stack += [current / name for name, is_dir in reversed(entries) if is_dir]
    return sorted(files), unlisted


def path_problem(path: str | Path) -> str | None:
    """Why `path` is not a readable regular file ("does not exist", "is a symbolic link
    loop", ...), or None when it is one. Says nothing about the contents."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop"
        if exc.errno == errno.ENOENT:
            return "is a broken symbolic link" if os.path.islink(path) else "does not exist"
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    return None


# ---------------------------------------------------------------------------- decoding

def _scale16(values: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255, rounded: v * 255 / 65535 = v / 257, so v * 257 maps back to v."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def to_rgb8(img: Image.Image) -> Image.Image:
    """`img` as 8-bit RGB, converted by what its pixel values mean (see the module docstring).
    Raises UnreadableImage when the values have no known scale."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(img)
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi > 65535:
            raise UnreadableImage(f"32-bit pixel values {lo}..{hi} lie outside 0..65535: bit depth unknown")
        return Image.fromarray(_scale16(values)).convert("RGB")
    if mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1:
            raise UnreadableImage("floating-point pixels outside 0..1: scale unknown")
        return Image.fromarray(np.rint(values * 255).astype(np.uint8)).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        flat = (rgba[..., :3] * rgba[..., 3:] + 127) // 255
        return Image.fromarray(flat.astype(np.uint8))
    return img.convert("RGB")


def open_rgb(source: str | Path | BinaryIO, max_pixels: int | None = None) -> Image.Image:
    """Open fully (so truncation is caught now), honour EXIF orientation, convert to 8-bit RGB.
    `source` is a path or an open binary file (an upload). With `max_pixels`, an image whose
    header claims more pixels raises `TooManyPixels` before any pixel is decoded. Raises on any
    file that cannot be decoded; `decode_images` turns that into a report line."""
    if isinstance(source, (str, Path)):
        problem = path_problem(source)
        if problem is not None:
            raise UnreadableImage(problem)
        if os.path.getsize(source) == 0:
            raise UnreadableImage("is empty (0 bytes)")
    with warnings.catch_warnings():
        # Pillow warns (UserWarning) about damage it reads past, such as corrupt EXIF: the
        # file then decodes or fails like any other, without a stray line per file.
        warnings.simplefilter("ignore", UserWarning)
        # A file claiming a huge size is refused rather than allowed to fill memory.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(source)  # reads the header only
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            # Pillow's own guard (over ~89 Mpx) fired before ours could read the size.
            raise TooManyPixels(f"image exceeds Pillow's decompression-bomb limit of "
                                f"{Image.MAX_IMAGE_PIXELS:,} pixels" + (f" (and this limit of {max_pixels:,})"
                                                                         if max_pixels else "")) from None
        with img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise TooManyPixels(f"image of {img.width} x {img.height} pixels exceeds the limit of "
                                    f"{max_pixels:,} pixels")
            img.load()
            return to_rgb8(ImageOps.exif_transpose(img))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (UnreadableImage, CnnlabError)):  # messages written for the user (a face step's refusal)
        return str(exc)
    if isinstance(exc, UnidentifiedImageError):  # Pillow's message repeats the path
        return "not an image format Pillow can read"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}".strip().rstrip(":")


def decode_images(paths: Sequence[str | Path], transform: Callable[..., Image.Image] | None,
                  size: tuple[int, int], strict: bool = False, progress: bool | None = False,
                  per_file: Sequence | None = None, advance: Callable[[int], object] | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, DecodeReport]:
    """Decode `paths` into an N x H x W x 3 uint8 array (`size` = (H, W) after `transform`).
    With `per_file` (one value per path, e.g. that file's face landmarks) the transform is
    called as `transform(image, per_file[i])`. `advance(1)` is called after each file (an outer
    progress bar's `update`, where decoding is one step of longer work).

    Returns (images, ok_index, report): ok_index are the positions in `paths` that decoded.
    A bad file is reported by path (and, when it decoded but `transform` refused it, in
    `report.refused`); with `strict` the first one raises a CnnlabError.
    """
    from cnnlab.core.progress import progress_bar

    report = DecodeReport(total=len(paths))
    out = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    for i, p in enumerate(progress_bar(paths, desc="decode", enable=progress)):
        decoded = False
        try:
            img = open_rgb(p)
            decoded = True
            if transform is not None:
                img = transform(img) if per_file is None else transform(img, per_file[i])
            arr = np.asarray(img, dtype=np.uint8)
            if arr.shape != (size[0], size[1], 3):
                raise UnreadableImage(f"decoded to shape {arr.shape}, expected {(size[0], size[1], 3)}")
            out[i] = arr
            ok[i] = True
        except Exception as exc:  # Pillow raises many types for bad files; all mean "unreadable"
            if strict:
                raise CnnlabError(f"unreadable image {p}: {_reason(exc)}") from None
            report.bad.append((str(p), _reason(exc)))
            if decoded:
                report.refused.append(str(p))
        if advance is not None:
            advance(1)
    idx = np.flatnonzero(ok)
    # No bad files (the usual case): hand back the buffer itself rather than a full copy.
    return (out if idx.size == len(paths) else out[idx]), idx, report


def decode_cached(paths: Sequence[str | Path], transform: Callable[..., Image.Image] | None,
                  size: tuple[int, int], *, name: str, spec: dict, cache=None, strict: bool = False,
                  progress: bool | None = False, per_file: Sequence | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, DecodeReport]:
    """`decode_images` through the shared `ArrayCache`: decoded once, keyed by the files, the
    `spec` (what `transform` depends on) and the decoder version. The report is rebuilt from
    `paths` as given now, so a cached entry names bad files as this call spells them; with
    `strict`, a bad file recorded by an earlier run raises too."""
    from cnnlab.data.cache import ArrayCache, fingerprint

    cache = cache if cache is not None else ArrayCache()
    key = fingerprint(paths, {**spec, "decoder": DECODER_VERSION})

    def build() -> dict[str, np.ndarray]:
        images, ok, report = decode_images(paths, transform, size, strict=strict, progress=progress,
                                           per_file=per_file)
        return {"images": images, "ok_index": ok.astype(np.int64),
                "bad_reasons": np.array([reason for _, reason in report.bad], dtype=str)}

    arrays = cache.load_or_build(name, key, build)
    ok = arrays["ok_index"].astype(np.int64)
    bad_index = np.setdiff1d(np.arange(len(paths)), ok)  # sorted: the order the files were tried
    reasons = arrays["bad_reasons"].tolist()
    if len(reasons) != len(bad_index):  # only a hand-edited entry could get here
        reasons = ["unreadable"] * len(bad_index)
    report = DecodeReport([(str(paths[i]), str(r)) for i, r in zip(bad_index, reasons)], total=len(paths))
    if strict and report.bad:
        path, reason = report.bad[0]
        raise CnnlabError(f"unreadable image {path}: {reason} ({len(report.bad)} bad file(s))")
    return arrays["images"], ok, report
