"""Identity-folder face data: one folder per person, decoded once into a uint8 cache.

Layouts: LFW's `<Name>/<Name>_0001.jpg` (Huang et al. 2007, "Labeled Faces in the Wild") and
any `person/*.ext` tree such as AT&T/ORL's `sN/M.pgm` (Samaria and Harter 1994). Files are
decoded by the one decoder CIFAR folders use too (`cnnlab.data.images`: EXIF orientation,
16-bit/greyscale/alpha/CMYK -> 8-bit RGB, bad files named in one `DecodeReport`) and cached by
the shared `ArrayCache`, keyed by the files, the crop/size spec and the decoder version.
Normalisation is not cached: it runs on the device, so changing backbone statistics never
re-decodes.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.core.errors import CnnlabError
from cnnlab.data.align import DetectorSpec, NoFaceDetected, detect_cached, detector, warp_face
from cnnlab.data.cache import ArrayCache
from cnnlab.data.images import DecodeReport, decode_cached, list_folders, list_images

# Bump when the decode/crop code changes in a way that changes pixels: old cache entries die.
_CACHE_VERSION = 1
_TRAILING_NUMBER = re.compile(r"(\d+)$")
# The name saved models give the aligned face step (see `FacePreprocess.model_extra`).
ALIGN_KIND = "mtcnn-align"


@dataclass(frozen=True)
class FacePreprocess:
    """The face step: what the cached uint8 pixels depend on. Either a centre crop (source
    pixels) and square resize, or (`align=True`) MTCNN's 5 landmarks warped onto the template
    of `cnnlab.data.align` at `size` px with `padding` around it. Normalisation is not here:
    `SiameseNet` applies its backbone's mean/std itself, so saved models, verify and ONNX all
    take plain RGB.

    LFW deep-funneled faces are ~110 px wide in 250x250 images (detector box enlarged 2.2x);
    a 150 px centre crop keeps the face plus a little context. The crop is clamped to the
    image's shorter side (AT&T's 92x112 images give a 92 px square). `crop=None` takes the
    largest centred square.

    Aligned, a file where no face is found gets the centre crop when `fallback` is on (so
    LFW's protocol pairs all stay scoreable; the file is listed in the decode report), else
    it is skipped and reported.
    """
    crop: int | None = 150
    size: int = 112
    align: bool = False
    padding: float = 0.25
    fallback: bool = True
    detector: DetectorSpec = field(default_factory=DetectorSpec)

    def __post_init__(self):
        if self.crop is not None and int(self.crop) < 1:
            raise ValueError(f"crop must be a positive number of pixels or None, got {self.crop}")
        if int(self.size) < 1:
            raise ValueError(f"size must be positive, got {self.size}")
        if not -0.5 < float(self.padding) <= 2:
            raise ValueError(f"padding must be in (-0.5, 2], got {self.padding}")

    def cache_spec(self) -> dict:
        """What changes the cached uint8 pixels."""
        spec = {"crop": self.crop, "size": self.size, "version": _CACHE_VERSION}
        if self.align:
            spec.update(align=self.detector.cache_spec(), padding=self.padding, fallback=self.fallback)
        return spec

    def model_extra(self) -> dict:
        """What a saved model records so verify/search/serve rebuild this face step:
        `{"preprocess": {"kind": ..., options}}` for alignment (`cnnlab.verifier.images`'
        registry names the kind); the centre crop keeps its `crop`/`input_size` keys."""
        if not self.align:
            return {}
        d = self.detector
        return {"preprocess": {"kind": ALIGN_KIND, "size": self.size, "padding": self.padding, "crop": self.crop,
                               "min_face": d.min_face, "max_side": d.max_side, "min_score": d.min_score}}

    def transform(self, img: Image.Image, landmarks: np.ndarray | None = None) -> Image.Image:
        """The face of `img`. Aligned, `landmarks` are the face's 5 points when already known
        (NaN: known to have no face); without them the detector runs on `img`."""
        if not self.align:
            return self.centre_crop(img)
        if landmarks is None:
            landmarks = detector(self.detector).detect([img])[0]
        elif np.isnan(landmarks).any():
            landmarks = None
        if landmarks is None:
            if self.fallback:
                return self.centre_crop(img)
            raise NoFaceDetected("no face found")
        return warp_face(img, landmarks, self.size, self.padding)

    def centre_crop(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        side = min(w, h) if self.crop is None else min(int(self.crop), w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
        if side != self.size:
            img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
        return img


@dataclass
class FaceDataset:
    """Decoded faces: `images[i]` is person `people[labels[i]]`, read from `root / paths[i]`."""
    images: np.ndarray          # N x S x S x 3 uint8
    labels: np.ndarray          # N int64, index into `people`
    people: list[str]
    paths: list[str]            # relative to `root`, POSIX separators
    root: Path
    spec: FacePreprocess = field(default_factory=FacePreprocess)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if not (len(self.images) == len(self.labels) == len(self.paths)):
            raise ValueError("images, labels and paths must have the same length")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_people(self) -> int:
        return len(self.people)

    def images_per_person(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.people))

    def negatives_only_people(self) -> list[str]:
        """People with fewer than 2 images: they can only ever be in different-person pairs."""
        counts = self.images_per_person()
        return [p for p, c in zip(self.people, counts) if c < 2]

    @cached_property
    def _number_index(self) -> dict[tuple[str, int], int]:
        index = {}
        for i, (rel, label) in enumerate(zip(self.paths, self.labels)):
            m = _TRAILING_NUMBER.search(Path(rel).stem)
            if m:
                index[(self.people[label], int(m.group(1)))] = i
        return index

    def has_image(self, name: str, image_number: int) -> bool:
        """Whether image `image_number` of `name` decoded (see `index_of`)."""
        return (name, int(image_number)) in self._number_index

    def index_of(self, name: str, image_number: int) -> int:
        """Row of image `image_number` of `name` (LFW `Name_0007.jpg` -> 7; AT&T `s3/7.pgm` -> 7)."""
        try:
            return self._number_index[(name, int(image_number))]
        except KeyError:
            raise CnnlabError(f"no decoded image {image_number} of {name!r} in {self.root} "
                              "(missing, unreadable, or that person was not loaded)") from None

    def pair_indices(self, pairs: Iterable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(i, j, same) row arrays for protocol pairs (objects with name1, n1, name2, n2, same)."""
        pairs = list(pairs)
        i = np.array([self.index_of(p.name1, p.n1) for p in pairs], dtype=np.int64)
        j = np.array([self.index_of(p.name2, p.n2) for p in pairs], dtype=np.int64)
        same = np.array([bool(p.same) for p in pairs], dtype=bool)
        return i, j, same

    def indices_of_people(self, names: Iterable[str]) -> np.ndarray:
        """Rows of every image of `names` (an identity split selects people, never images)."""
        wanted = set(names)
        unknown = wanted.difference(self.people)
        if unknown:
            raise CnnlabError(f"{len(unknown)} requested people not in {self.root}, e.g. {sorted(unknown)[:3]}")
        keep = np.array([p in wanted for p in self.people], dtype=bool)
        return np.flatnonzero(keep[self.labels])

    def subset(self, names: Iterable[str]) -> FaceDataset:
        """A copy holding only `names`' images, labels renumbered 0..P-1 in `people` order."""
        rows = self.indices_of_people(names)
        kept_labels = np.unique(self.labels[rows])
        remap = np.full(len(self.people), -1, dtype=np.int64)
        remap[kept_labels] = np.arange(len(kept_labels))
        return FaceDataset(images=self.images[rows], labels=remap[self.labels[rows]],
                           people=[self.people[k] for k in kept_labels],
                           paths=[self.paths[r] for r in rows], root=self.root, spec=self.spec)

    def summary(self, report: DecodeReport | None = None) -> str:
        single = len(self.negatives_only_people())
        text = (f"{len(self)} images of {self.num_people} people from {self.root} "
                f"({single} with fewer than 2 images: in no same-person pair)")
        return f"{text}; {report.summary()}" if report is not None else text


def merge_datasets(base: FaceDataset, others: Sequence[tuple[str, FaceDataset]]) -> FaceDataset:
    """One dataset of `base` and `others`: `base`'s rows first and unchanged (people, labels,
    paths relative to its root), then each `(tag, dataset)`'s people renamed `tag/person` (so
    no name can meet one of `base`'s, and LFW's protocol pairs still resolve) with absolute paths
    (`root / path` is then the file itself). Splits select its rows by person, as for one source.
    All must come from one face step: their pixels must have the same size."""
    if not others:
        return base
    for tag, other in others:
        if other.images.shape[1:] != base.images.shape[1:]:
            raise CnnlabError(f"{tag}: images of shape {other.images.shape[1:]} cannot join {base.root}'s "
                              f"{base.images.shape[1:]} (one face step for every source)")
    people, labels, paths = list(base.people), [base.labels], list(base.paths)
    for tag, other in others:
        labels.append(other.labels + len(people))
        people += [f"{tag}/{p}" for p in other.people]
        paths += [str(Path(other.root).absolute() / rel) for rel in other.paths]
    if len(set(people)) != len(people):
        raise CnnlabError("two sources give the same person name; give each source its own tag")
    return FaceDataset(images=np.concatenate([base.images] + [o.images for _, o in others]),
                       labels=np.concatenate(labels), people=people, paths=paths, root=base.root, spec=base.spec)


def scan_identity_folders(root: str | Path, people: Sequence[str] | None = None,
                          files: Sequence[str] | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """(people, [(person, relative path)]) for `root/<person>/<image>`, sorted; hidden files
    and files without an image extension are ignored (a README beside the images is fine).
    A broken link or symlink loop with an image name is listed, so the decoder names it."""
    root = Path(root)
    if not root.is_dir():
        raise CnnlabError(f"face folder not found: {root}")
    folders = list_folders(root)
    if people is not None:
        missing = sorted(set(people).difference(folders))
        if missing:
            raise CnnlabError(f"{len(missing)} requested people have no folder in {root}, e.g. {missing[:3]}")
        wanted = set(people)
        folders = [f for f in folders if f in wanted]
    wanted = None if files is None else set(files)
    if wanted is not None:  # only these files (relative POSIX paths), of their people's folders
        people_of_files = {rel.split("/", 1)[0] for rel in wanted}
        folders = [f for f in folders if f in people_of_files]
    found = []
    for person in folders:
        found += [(person, rel) for rel in (f"{person}/{f.name}" for f in list_images(root / person))
                  if wanted is None or rel in wanted]
    if wanted is not None:
        missing = sorted(wanted.difference(rel for _, rel in found))
        if missing:
            raise CnnlabError(f"{len(missing)} requested image(s) not found under {root}, e.g. {missing[:3]}")
    if not found:
        raise CnnlabError(f"no image files found under {root} (expected {root}/<person>/<image>)")
    return folders, found


def load_identity_folders(root: str | Path, spec: FacePreprocess | None = None, *,
                          people: Sequence[str] | None = None, files: Sequence[str] | None = None,
                          strict: bool = False,
                          progress: bool | None = None, cache: ArrayCache | None = None,
                          ) -> tuple[FaceDataset, DecodeReport]:
    """Decode (or load from the cache) every image under `root/<person>/` (only the folders of
    `people`, only `files` -- paths relative to `root` -- when given).

    Bad files are skipped and listed in the report; `strict=True` raises a CnnlabError naming
    the first bad file instead (also when the bad file was recorded by an earlier cached run).
    People whose images all fail are dropped; people with one image stay (in no same-person pair: impostors at most).
    """
    root = Path(root)
    _, found = scan_identity_folders(root, people, files)
    return load_face_files(root, found, spec, strict=strict, progress=progress, cache=cache)


def load_face_files(root: str | Path, files: Sequence[tuple[str, str]], spec: FacePreprocess | None = None, *,
                    strict: bool = False, progress: bool | None = None, cache: ArrayCache | None = None,
                    ) -> tuple[FaceDataset, DecodeReport]:
    """Decode (or load from the cache) `files`, (person, path relative to `root`) pairs from
    any layout that names each image's person (identity folders, CelebA's identity file), as
    `load_identity_folders` does."""
    root = Path(root)
    spec = spec or FacePreprocess()
    abs_paths = [str(root / rel) for _, rel in files]
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", root.name) or "faces"
    landmarks = None
    if spec.align:  # detected once per set of files, whatever size or padding is asked for
        landmarks = detect_cached(abs_paths, spec.detector, name=safe_name, cache=cache, progress=progress)
    images, ok, report = decode_cached(abs_paths, spec.transform, (spec.size, spec.size), name=f"faces-{safe_name}",
                                       spec=spec.cache_spec(), cache=cache, strict=strict, progress=progress,
                                       per_file=landmarks)
    if landmarks is not None and spec.fallback:
        report.fallback = [(abs_paths[i], "no face found: centre crop used")
                           for i in ok if np.isnan(landmarks[i]).any()]
    persons = [files[i][0] for i in ok]
    kept_people = sorted(set(persons))
    label_of = {p: k for k, p in enumerate(kept_people)}
    if not kept_people:
        raise CnnlabError(f"no readable images under {root}; {report.summary()}")
    dataset = FaceDataset(images=images, labels=np.array([label_of[p] for p in persons], dtype=np.int64),
                          people=kept_people, paths=[files[i][1] for i in ok], root=root, spec=spec)
    return dataset, report

