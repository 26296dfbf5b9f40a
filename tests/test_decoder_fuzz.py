"""Fuzzing the one image decoder (issue 11): random byte strings, random truncations and byte
flips of a real JPEG and PNG never let an exception escape. Each file either decodes to an
8-bit RGB image of the asked size or lands in the bad-file report with a one-line reason; in
strict mode the only exception is the one-line CnnlabError."""
from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.core.errors import CnnlabError
from cnnlab.data.faces import FacePreprocess
from cnnlab.data.images import decode_images

SEED = 20261129
# Magic numbers of formats Pillow knows: random bodies behind them reach the format parsers,
# not just the "cannot identify" check.
MAGICS = [b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
          b"P5\n", b"P6\n16 16\n255\n", b"RIFF\x00\x00\x00\x00WEBPVP8 "]


def real_image_bytes(fmt: str) -> bytes:
    """A 40 x 48 photo-like image (smooth colour ramps plus noise) in `fmt`."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:48]
    img = np.stack([xx * 5, yy * 6, (xx + yy) * 3], -1) + rng.normal(0, 12, (40, 48, 3))
    buffer = io.BytesIO()
    options = {"quality": 90} if fmt == "JPEG" else {}
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buffer, fmt, **options)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose (checksummed) header claims `width` x `height`, with no pixel data."""
    body = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(body)) + b"IHDR" + body + struct.pack(">I", zlib.crc32(b"IHDR" + body))
    return b"\x89PNG\r\n\x1a\n" + chunk


def fuzz_cases(rng: np.random.Generator) -> dict[str, bytes]:
    cases = {}
    for k in range(200):  # random byte strings, most behind a real format's magic number
        magic = MAGICS[k % len(MAGICS)]
        cases[f"random-{k:03d}.jpg"] = magic + rng.bytes(int(rng.integers(0, 3000)))
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png")):
        data = real_image_bytes(fmt)
        cases[f"whole.{ext}"] = data
        for k, cut in enumerate(sorted(rng.choice(len(data), size=40, replace=False))):
            cases[f"cut-{k:02d}.{ext}"] = data[:cut]
        for k in range(30):  # a few bytes overwritten anywhere, headers included
            mutated = bytearray(data)
            for pos in rng.choice(len(data), size=int(rng.integers(1, 8)), replace=False):
                mutated[pos] = int(rng.integers(0, 256))
            cases[f"flip-{k:02d}.{ext}"] = bytes(mutated)
    cases["bomb.png"] = png_claiming(200_000, 200_000)     # refused, never allocated
    return cases


@pytest.fixture(scope="module")
def fuzz_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("fuzz")
    paths = []
    for name, data in fuzz_cases(np.random.default_rng(SEED)).items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    return paths


def test_every_file_decodes_or_is_reported_with_a_one_line_reason(fuzz_files):
    spec = FacePreprocess(crop=32, size=24)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images, ok, report = decode_images(fuzz_files, spec.transform, (24, 24))
    assert caught == []                                  # nor a stray warning line per damaged file
    assert len(fuzz_files) >= 200 + 2 * 71 + 1
    bad = [p for p, _ in report.bad]
    # Every file is accounted for exactly once, in order.
    assert sorted([str(fuzz_files[i]) for i in ok] + bad) == sorted(map(str, fuzz_files))
    assert not set(bad) & {str(fuzz_files[i]) for i in ok} and report.total == len(fuzz_files)
    assert images.shape == (len(ok), 24, 24, 3) and images.dtype == np.uint8
    for path, reason in report.bad:
        assert reason and "\n" not in reason, (path, reason)
    names = {Path(p).name for p in bad}
    assert "whole.jpg" not in names and "whole.png" not in names      # the real files decode
    assert "bomb.png" in names
    assert {"cut-00.jpg", "cut-00.png"} <= names                       # the shortest truncations


def test_strict_mode_raises_only_the_one_line_error(fuzz_files):
    spec = FacePreprocess(crop=32, size=24)
    _, _, report = decode_images(fuzz_files, spec.transform, (24, 24))
    for path, reason in report.bad:
        with pytest.raises(CnnlabError) as err:
            decode_images([path], spec.transform, (24, 24), strict=True)
        assert str(err.value) == f"unreadable image {path}: {reason}"
