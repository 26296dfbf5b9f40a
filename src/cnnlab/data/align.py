"""Face detection and 5-point alignment: find the face, then warp it by a similarity transform
(rotation, uniform scale, translation) so its eyes, nose tip and mouth corners land on a fixed
template. Every face tool of the field (facenet-pytorch, insightface, deepface) does this
before embedding; a centre crop only works on photos already framed like LFW's.

Detection is MTCNN (Zhang et al. 2016, "Joint Face Detection and Alignment using Multi-task
Cascaded Convolutional Networks") as packaged by `facenet-pytorch`, whose wheel carries the
network weights, so it runs offline. That wheel pins an old torch in its metadata: install it
with `pip install --no-deps facenet-pytorch==2.6.0 requests` (the Makefile does).

The template is the 5-point layout of the 112 x 112 crops that ArcFace-style recognisers are
trained on (left eye, right eye, nose tip, left and right mouth corner; image coordinates,
"left" = the left of the picture). `padding` widens the square around it (0.25: a side of
140 template units scaled to the output size) so some hair, chin and ears stay in view, which
an ImageNet backbone that was never trained on tight face crops uses.

Detection is the expensive step (~25 ms per LFW image on 2 CPU cores): `detect_cached` runs it
once per set of files and keeps the landmarks in the shared `ArrayCache`, so changing the
output size or padding re-warps without re-detecting.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from cnnlab.core.errors import CnnlabError
from cnnlab.data.images import UnreadableImage

TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
# Bump when detection or face selection changes which landmarks a file gets.
DETECTOR_VERSION = 1
INSTALL_HINT = "pip install --no-deps facenet-pytorch==2.6.0 requests"


class NoFaceDetected(UnreadableImage):
    """No face scored high enough in an image that had to have one."""


def template(size: int, padding: float) -> np.ndarray:
    """The 5 template points for a `size` x `size` output whose side spans 112 * (1 + padding)
    template units, the template centred in it."""
    side = 112.0 * (1.0 + padding)
    return (TEMPLATE_112 - 56.0 + side / 2.0) * (size / side)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 similarity (no reflection, no shear) that maps `src` points onto `dst` with
    the least squared error: Umeyama (1991), "Least-squares estimation of transformation
    parameters between two point patterns"."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs ** 2).sum() / len(src)
    if var_s <= 0:
        raise ValueError("landmarks are all at one point")
    cov = xd.T @ xs / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # the best fit is a reflection: take the best rotation
        d[-1] = -1
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / var_s
    shift = mu_d - scale * rotation @ mu_s
    return np.hstack([scale * rotation, shift[:, None]])


def warp_face(img: Image.Image, landmarks: np.ndarray, size: int, padding: float) -> Image.Image:
    """`img` warped so `landmarks` (5 x 2, source pixels) land on `template(size, padding)`."""
    matrix = similarity_transform(landmarks, template(size, padding))
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    # Bilinear sampling aliases when it shrinks a lot (a face 600 px wide into 192 px): shrink
    # by a whole factor first with a box filter, then warp at no worse than 2:1.
    factor = int(1.0 / scale / 2.0) if scale < 0.5 else 1
    if factor > 1:
        img = img.reduce(factor)
        landmarks = np.asarray(landmarks, np.float64) / factor
        matrix = similarity_transform(landmarks, template(size, padding))
    # PIL maps each output pixel centre (x + 0.5, y + 0.5) through the inverse matrix to input
    # coordinates with pixel centres at +0.5 too; landmarks are in the same continuous frame.
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(full)[:2]
    return img.transform((size, size), Image.Transform.AFFINE, tuple(inverse.ravel()),
                         resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))


@dataclass(frozen=True)
class DetectorSpec:
    """MTCNN's settings. `min_face` is the smallest face side searched, in pixels of the image
    after it is shrunk to at most `max_side` (bigger photos are shrunk first: detection time
    grows with the pixel count, landmarks are scaled back). `min_score`: faces below it are
    ignored."""
    min_face: int = 40
    max_side: int = 1024
    min_score: float = 0.9
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)

    def __post_init__(self):
        if self.min_face < 12:
            raise ValueError(f"min_face must be >= 12 pixels (MTCNN's smallest window), got {self.min_face}")
        if self.max_side < self.min_face:
            raise ValueError(f"max_side must be >= min_face, got {self.max_side}")
        if not 0 <= self.min_score <= 1:
            raise ValueError(f"min_score must be in [0, 1], got {self.min_score}")

    def cache_spec(self) -> dict:
        return {**asdict(self), "thresholds": list(self.thresholds), "detector_version": DETECTOR_VERSION}


def choose_face(boxes: np.ndarray, scores: np.ndarray, image_size: tuple[int, int], min_score: float) -> int | None:
    """Index of the face to keep: the largest and most central one (box area minus twice the
    squared distance of its centre from the image centre), among faces scoring >= min_score."""
    keep = np.flatnonzero(np.asarray(scores, np.float64) >= min_score)
    if keep.size == 0:
        return None
    b = np.asarray(boxes, np.float64)[keep]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    centre = np.array(image_size, np.float64) / 2.0
    offset = ((b[:, :2] + b[:, 2:]) / 2.0 - centre)
    score = area - 2.0 * (offset ** 2).sum(1)
    return int(keep[int(np.argmax(score))])


DETECT_THREADS = 1
_THREADS_LOCK = threading.RLock()


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to `n` for the block, then restored. The setting is
    process-wide: other threads' torch work meanwhile runs with it too."""
    import torch
    with _THREADS_LOCK:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)


class FaceDetector:
    """MTCNN on the CPU: `detect(images)` -> per image a 5 x 2 landmark array (source pixels)
    or None when no face scores high enough. Same-size images are detected as one batch."""

    def __init__(self, spec: DetectorSpec | None = None):
        self.spec = spec or DetectorSpec()
        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:
            raise CnnlabError(f"face alignment needs facenet-pytorch (MTCNN and its weights): {INSTALL_HINT} "
                              f"({exc})") from None
        self._mtcnn = MTCNN(keep_all=True, min_face_size=self.spec.min_face,
                            thresholds=list(self.spec.thresholds), device="cpu")
        self._lock = threading.Lock()  # one detection at a time: the service may call from threads

    def _shrink(self, img: Image.Image) -> tuple[Image.Image, float]:
        longest = max(img.size)
        if longest <= self.spec.max_side:
            return img, 1.0
        ratio = self.spec.max_side / longest
        size = (max(1, round(img.size[0] * ratio)), max(1, round(img.size[1] * ratio)))
        return img.resize(size, Image.Resampling.BOX), ratio

    def detect(self, images: Sequence[Image.Image], batch_size: int = 16) -> list[np.ndarray | None]:
        # One torch thread while MTCNN runs. Beside a busy process every op of a two-thread
        # pool waits at a barrier for the thread that is not getting the CPU: 48 LFW images ran
        # at 3.0 img/s with two threads and 42.8 with one (14x); on an idle machine two threads
        # are faster (77 vs 45 img/s, 0.59x). One thread bounds the worst case
        # (benchmarks/bench_detect.py, docs/performance.md).
        with torch_threads(DETECT_THREADS):
            return self._detect(images, batch_size)

    def _detect(self, images: Sequence[Image.Image], batch_size: int = 16) -> list[np.ndarray | None]:
        import torch

        shrunk = [self._shrink(img.convert("RGB")) for img in images]
        out: list[np.ndarray | None] = [None] * len(images)
        start = 0
        while start < len(shrunk):  # batches of consecutive images of one size
            size = shrunk[start][0].size
            stop = start + 1
            while stop < len(shrunk) and stop - start < batch_size and shrunk[stop][0].size == size:
                stop += 1
            batch = [img for img, _ in shrunk[start:stop]]
            if min(size) < self.spec.min_face:
                # Smaller than the smallest face searched: no face can be found (and MTCNN's
                # image pyramid would be empty, which it does not survive).
                start = stop
                continue
            with self._lock, torch.inference_mode():
                boxes, scores, points = self._mtcnn.detect(batch, landmarks=True)
            for offset, (b, s, p) in enumerate(zip(boxes, scores, points)):
                if b is None:
                    continue
                chosen = choose_face(b, s, size, self.spec.min_score)
                if chosen is not None:
                    out[start + offset] = np.asarray(p[chosen], np.float64) / shrunk[start + offset][1]
            start = stop
        return out


_DETECTORS: dict[DetectorSpec, FaceDetector] = {}
_DETECTORS_LOCK = threading.Lock()


def detector(spec: DetectorSpec | None = None) -> FaceDetector:
    """One shared detector per spec and process (MTCNN's three nets load once)."""
    spec = spec or DetectorSpec()
    with _DETECTORS_LOCK:
        if spec not in _DETECTORS:
            _DETECTORS[spec] = FaceDetector(spec)
        return _DETECTORS[spec]


def detect_cached(paths: Sequence[str], spec: DetectorSpec | None = None, *, name: str, cache=None,
                  progress: bool | None = False, chunk: int = 64) -> np.ndarray:
    """N x 5 x 2 float32 landmarks of `paths` (NaN where no face was found or the file could
    not be read: the decoder reports those), detected once and kept in the `ArrayCache`."""
    from cnnlab.core.progress import progress_bar
    from cnnlab.data.cache import ArrayCache, fingerprint
    from cnnlab.data.images import open_rgb

    spec = spec or DetectorSpec()
    cache = cache if cache is not None else ArrayCache()

    def build() -> dict[str, np.ndarray]:
        found = np.full((len(paths), 5, 2), np.nan, dtype=np.float32)
        det = detector(spec)
        bar = progress_bar(total=len(paths), desc="detect faces", enable=progress)
        for start in range(0, len(paths), chunk):
            rows, images = [], []
            for i in range(start, min(start + chunk, len(paths))):
                try:
                    images.append(open_rgb(paths[i]))
                    rows.append(i)
                except Exception:  # unreadable: the decoding pass names it in its report
                    pass
            for i, points in zip(rows, det.detect(images)):
                if points is not None:
                    found[i] = points
            bar.update(min(chunk, len(paths) - start))
        bar.close()
        return {"landmarks": found}

    key = fingerprint(paths, spec.cache_spec())
    return cache.load_or_build(f"landmarks-{name}", key, build)["landmarks"]
