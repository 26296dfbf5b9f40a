"""CIFAR-10 (Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny Images") in the
forms users keep it: the official pickled `cifar-10-batches-py` (what
`torchvision.datasets.CIFAR10(download=True)` writes), an ImageFolder tree
`train/<class>/*` + `test/<class>/*`, and a synthetic stand-in for tests.

Every source is decoded once into uint8 arrays through the shared `ArrayCache` (image
folders by the one decoder, `cnnlab.data.images`, the same code face folders use: unreadable
files are skipped and named in the splits' `report`); a validation split is then held out
of the training set (stratified, seeded), so model selection never looks at the test set.
"""
from __future__ import annotations

import colorsys
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.core.env import DATA_ENV, data_root
from cnnlab.core.errors import CnnlabError
from cnnlab.data.cache import ArrayCache, fingerprint
from cnnlab.data.images import DecodeReport, decode_cached, list_folders, list_images

CIFAR10_CLASSES: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer",
                                    "dog", "frog", "horse", "ship", "truck")
IMAGEFOLDER_NAME = "cifar10-jpg"
PICKLE_NAME = "cifar-10-batches-py"
PICKLE_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
PICKLE_TEST_FILE = "test_batch"
PICKLE_META_FILE = "batches.meta"
# Bump when the reading code changes pixels (the decoder's own version is in every key too).
_CACHE_VERSION = 1


@dataclass
class ImageSplits:
    """Images are uint8 N x H x W x 3, labels int64; train/val come from the official
    training set, test is the official test set."""
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    source: str
    info: dict = field(default_factory=dict)
    report: DecodeReport = field(default_factory=DecodeReport)  # files skipped as unreadable

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ---------------------------------------------------------------------------- locating data

def _is_pickle_dir(path: Path) -> bool:
    return all((path / name).is_file() for name in (*PICKLE_TRAIN_FILES, PICKLE_TEST_FILE))


def _is_imagefolder(path: Path) -> bool:
    return (path / "train").is_dir() and (path / "test").is_dir()


def _detect(path: Path) -> tuple[str, Path] | None:
    is_form = {"pickle": _is_pickle_dir, "imagefolder": _is_imagefolder}
    # The pickles are the lossless original; prefer them when a root holds both forms.
    for kind, candidate in (("pickle", path / PICKLE_NAME), ("imagefolder", path / IMAGEFOLDER_NAME),
                            ("pickle", path), ("imagefolder", path)):
        if is_form[kind](candidate):
            return kind, candidate
    return None


def find_cifar_root(data: str | Path | None = None) -> tuple[str, Path]:
    """Resolve `data` (the --data flag), else the data root (`cnnlab.core.env.data_root`:
    $CNNLAB_DATA, else the download folder), to ("pickle" | "imagefolder", folder). Each may name
    the data root holding `cifar10-jpg/` or `cifar-10-batches-py/`, or the data set folder itself."""
    path, origin = (Path(data).expanduser(), "--data") if data is not None else data_root()
    found = _detect(path) if path.is_dir() else None
    if found is None:
        raise CnnlabError(
            f"CIFAR-10 not found in {path} (from {origin}): expected {IMAGEFOLDER_NAME}/ or "
            f"{PICKLE_NAME}/ there, or train/<class>/ + test/<class>/ folders, or the official "
            f"data_batch_1..5 + test_batch files; point at it with --data DIR or CNNLAB_DATA=DIR"
            + ("" if origin in ("--data", DATA_ENV) else
               ", or download the official copy (download=True, needs internet)"))
    return found[0], found[1].resolve()


def download_cifar10(root: str | Path) -> Path:
    """Fetch the official archive with torchvision (needs internet); returns the batches folder."""
    root = Path(root).expanduser()
    try:
        import torchvision
        root.mkdir(parents=True, exist_ok=True)
        torchvision.datasets.CIFAR10(root=str(root), train=True, download=True)
    except Exception as exc:  # network, disk or checksum failure: all end the run the same way
        raise CnnlabError(f"could not download CIFAR-10 into {root}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return root / PICKLE_NAME


# ---------------------------------------------------------------------------- readers

class _ArrayUnpickler(pickle.Unpickler):
    """The official batches are pickles; allow only what they contain (numpy arrays, lists,
    bytes), so a data file cannot run code."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as exc:
        raise CnnlabError(f"{path} is not a CIFAR-10 pickle batch: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise CnnlabError(f"{path} is not a CIFAR-10 pickle batch: holds {type(obj).__name__}, not a dict")
    # Python 2 pickles have bytes keys, torchvision/Python 3 writers may use str keys.
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _read_pickle_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    labels_key = "labels" if "labels" in batch else "fine_labels"
    if "data" not in batch or labels_key not in batch:
        raise CnnlabError(f"{path} is not a CIFAR-10 pickle batch: missing 'data' or 'labels'")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch[labels_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise CnnlabError(f"{path}: expected data N x 3072 and N labels, got {data.shape} and {labels.shape}")
    # Rows are channel-planar (1024 R, 1024 G, 1024 B), each plane row-major.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def _read_pickles(folder: Path) -> dict[str, np.ndarray]:
    train = [_read_pickle_batch(folder / name) for name in PICKLE_TRAIN_FILES]
    test_images, test_labels = _read_pickle_batch(folder / PICKLE_TEST_FILE)
    class_names = CIFAR10_CLASSES
    if (folder / PICKLE_META_FILE).is_file():
        meta = _unpickle(folder / PICKLE_META_FILE)
        names = meta.get("label_names")
        if names:
            class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return {"train_images": np.concatenate([t[0] for t in train]),
            "train_labels": np.concatenate([t[1] for t in train]),
            "test_images": test_images, "test_labels": test_labels,
            "class_names": np.array(class_names)}


def _list_imagefolder(split_dir: Path) -> tuple[list[str], list[Path], np.ndarray]:
    """(classes, image paths, labels) of `split_dir/<class>/*`. A class folder without image
    files is an error here, before anything is decoded or written: a model would otherwise
    get an output per folder but never see the empty class."""
    classes = list_folders(split_dir)
    if not classes:
        raise CnnlabError(f"no class folders in {split_dir} (expected {split_dir}/<class>/<image>)")
    paths, labels, empty = [], [], []
    for index, name in enumerate(classes):
        files = list_images(split_dir / name)
        if not files:
            empty.append(name)
        paths += files
        labels += [index] * len(files)
    if empty:
        others = f" (and {len(empty) - 1} more: {', '.join(empty[1:4])})" if len(empty) > 1 else ""
        raise CnnlabError(f"class folder {split_dir / empty[0]} has no image files{others}; every class "
                          "needs images in both train/ and test/: add images or remove the folder")
    return classes, paths, np.asarray(labels, dtype=np.int64)


def _resize_to(size: int) -> Callable:
    from PIL import Image

    def transform(img):
        return img if img.size == (size, size) else img.resize((size, size), Image.BILINEAR)
    return transform


def _check_every_class_decoded(labels: np.ndarray, paths: list[Path], ok: np.ndarray, folder: Path,
                               classes: list[str], report: DecodeReport) -> None:
    """A class folder whose every file was unreadable is as empty as one without files."""
    counts = np.bincount(labels[ok], minlength=len(classes))
    for c in np.flatnonzero(counts == 0):
        tried = {str(p) for p, label in zip(paths, labels) if label == c}
        first = next(f"{p}: {reason}" for p, reason in report.bad if p in tried)
        raise CnnlabError(f"class folder {folder / classes[c]} has no readable image: all {len(tried)} "
                          f"file(s) failed to decode (first {first})")


def _load_source(kind: str, folder: Path, size: int, progress: bool | None,
                 cache: ArrayCache) -> tuple[dict[str, np.ndarray], DecodeReport]:
    spec = {"format": kind, "size": size, "version": _CACHE_VERSION}
    if kind == "pickle":
        files = [folder / n for n in (*PICKLE_TRAIN_FILES, PICKLE_TEST_FILE, PICKLE_META_FILE)
                 if (folder / n).is_file()]
        if size != 32:
            raise CnnlabError(f"the pickled CIFAR-10 is 32x32; size={size} is not supported for it")
        arrays = cache.load_or_build("cifar10-pickle", fingerprint(files, spec), lambda: _read_pickles(folder))
        return arrays, DecodeReport()
    train_classes, train_paths, train_labels = _list_imagefolder(folder / "train")
    test_classes, test_paths, test_labels = _list_imagefolder(folder / "test")
    if test_classes != train_classes:
        raise CnnlabError(f"class folders differ between {folder / 'train'} and {folder / 'test'}: "
                          f"only in train {sorted(set(train_classes) - set(test_classes))}, "
                          f"only in test {sorted(set(test_classes) - set(train_classes))}")
    spec["classes"] = train_classes
    paths = [*train_paths, *test_paths]
    images, ok, report = decode_cached(paths, _resize_to(size), (size, size), name="cifar10-imagefolder",
                                       spec=spec, cache=cache, progress=progress)
    n_train = len(train_paths)
    for split, lo, hi, labels in (("train", 0, n_train, train_labels), ("test", n_train, len(paths), test_labels)):
        split_ok = ok[(ok >= lo) & (ok < hi)] - lo
        _check_every_class_decoded(labels, paths[lo:hi], split_ok, folder / split, train_classes, report)
    labels = np.concatenate([train_labels, test_labels])[ok]
    # `ok` is sorted and the train files come first: the two splits are slices (views of the
    # cached array, no 180 MB copy on every load).
    cut = int(np.searchsorted(ok, n_train))
    return {"train_images": images[:cut], "train_labels": labels[:cut],
            "test_images": images[cut:], "test_labels": labels[cut:],
            "class_names": np.array(train_classes)}, report


# ---------------------------------------------------------------------------- splits

def _stratified_counts(counts: np.ndarray, total: int) -> np.ndarray:
    """Per-class share of `total`, proportional to `counts`, summing exactly to `total`
    (largest remainder; ties go to the lower class index)."""
    exact = counts * total / counts.sum()
    share = np.floor(exact).astype(np.int64)
    remainder = total - share.sum()
    order = np.argsort(-(exact - share), kind="stable")
    share[order[:remainder]] += 1
    return share


def stratified_split(labels, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train_idx, val_idx), sorted, with each class's share of `val_size`
    proportional to its frequency; the same seed gives the same split."""
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 <= val_size < n:
        raise CnnlabError(f"validation size {val_size} must be >= 0 and below the {n} training images")
    classes, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(classes))
    share = _stratified_counts(counts, val_size)
    rng = np.random.default_rng(seed)
    val = [rng.permutation(np.flatnonzero(inverse == c))[:k] for c, k in enumerate(share)]
    val_idx = np.sort(np.concatenate(val)) if val else np.array([], dtype=np.int64)
    is_val = np.zeros(n, dtype=bool)
    is_val[val_idx] = True
    return np.flatnonzero(~is_val), val_idx.astype(np.int64)


def _make_splits(train_images, train_labels, test_images, test_labels, class_names, *, source,
                 val_size, seed, train_subset, info) -> ImageSplits:
    train_idx, val_idx = stratified_split(train_labels, val_size, seed)
    if train_subset is not None:
        if not 0 < train_subset <= len(train_idx):
            raise CnnlabError(f"train subset {train_subset} must be between 1 and the "
                              f"{len(train_idx)} training images left after validation")
        if train_subset < len(train_idx):
            # A separate stream from the validation draw, so the subset never changes the split.
            _, keep = stratified_split(train_labels[train_idx], train_subset, seed + 1)
            train_idx = train_idx[keep]
    info = {**info, "train": len(train_idx), "val": len(val_idx), "test": len(test_labels),
            "val_size": val_size, "seed": seed, "train_subset": train_subset}
    return ImageSplits(train_images[train_idx], train_labels[train_idx].astype(np.int64),
                       train_images[val_idx], train_labels[val_idx].astype(np.int64),
                       test_images, test_labels.astype(np.int64), tuple(class_names), source, info)


def load_cifar10(data: str | Path | None = None, *, val_size: int = 5000, seed: int = 0,
                 train_subset: int | None = None, download: bool = False,
                 progress: bool | None = None, size: int = 32,
                 cache: ArrayCache | None = None) -> ImageSplits:
    """CIFAR-10 as uint8 splits: `val_size` images held out of the official training set
    (stratified, seeded), optionally a stratified `train_subset` of the rest, and the
    official test set. Decoded once; later calls read the cache."""
    start = time.perf_counter()
    try:
        kind, folder = find_cifar_root(data)
    except CnnlabError:
        if not download:
            raise
        target = Path(data) if data is not None else data_root()[0]
        kind, folder = "pickle", download_cifar10(target).resolve()
    cache = cache if cache is not None else ArrayCache()
    arrays, report = _load_source(kind, folder, size, progress, cache)
    info = {"format": kind, "path": str(folder), "cache_hit": bool(cache.last_hit),
            "skipped_files": len(report.bad), "load_seconds": round(time.perf_counter() - start, 3)}
    splits = _make_splits(arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                          arrays["test_labels"], tuple(arrays["class_names"].tolist()),
                          source=f"{kind}:{folder}", val_size=val_size, seed=seed,
                          train_subset=train_subset, info=info)
    splits.report = report
    return splits


# ---------------------------------------------------------------------------- synthetic

def _synthetic_images(labels: np.ndarray, num_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Each class has its own colour, stripe orientation and stripe frequency; phase,
    brightness and noise vary per image. Colour and frequency survive random crops and
    flips, so augmented training can still learn the classes."""
    n = len(labels)
    colours = np.array([colorsys.hsv_to_rgb(c / num_classes, 0.75, 0.85) for c in range(num_classes)])
    angles = np.pi * np.arange(num_classes) / num_classes
    freqs = 2.0 + np.arange(num_classes) % 4
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    theta, freq = angles[labels][:, None, None], freqs[labels][:, None, None]
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    brightness = rng.uniform(0.75, 1.15, size=(n, 1, 1, 1))
    img = colours[labels][:, None, None, :] * (0.45 + 0.55 * stripes[..., None]) * brightness
    img += rng.normal(0.0, 0.08, size=img.shape)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def synthetic_cifar(n_train: int = 1000, n_test: int = 200, *, val_size: int = 200,
                    num_classes: int = 10, size: int = 32, seed: int = 0) -> ImageSplits:
    """A tiny learnable stand-in for CIFAR-10 in the same form: `n_train` images of which
    `val_size` are held out (like the 50,000 of the real training set), plus `n_test`."""
    if num_classes < 2 or n_train < num_classes or n_test < 1 or size < 8:
        raise CnnlabError("synthetic data needs num_classes >= 2, n_train >= num_classes, n_test >= 1, size >= 8")
    rng = np.random.default_rng(seed)
    train_labels = rng.permutation(np.arange(n_train) % num_classes).astype(np.int64)
    test_labels = rng.permutation(np.arange(n_test) % num_classes).astype(np.int64)
    train_images = _synthetic_images(train_labels, num_classes, size, rng)
    test_images = _synthetic_images(test_labels, num_classes, size, rng)
    names = CIFAR10_CLASSES if num_classes == 10 else tuple(f"class{i}" for i in range(num_classes))
    return _make_splits(train_images, train_labels, test_images, test_labels, names, source="synthetic",
                        val_size=val_size, seed=seed, train_subset=None,
                        info={"format": "synthetic", "path": None, "cache_hit": False, "skipped_files": 0})
