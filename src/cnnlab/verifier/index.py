"""A persistent gallery index: enrol a folder of faces once, search it many times.

The index is a folder:

    index.json        format, the model's fingerprint and path, distance, embedding size, the
                      list of shard files with their row counts and SHA-256, total rows
    shard-NNNNNN.npz  embeddings (float32) and, per row, name, person, source path, size, mtime
                      and SHA-256 of the file's bytes

`index.json` is the commit point. New embeddings go to a new shard file first, then
`index.json` is replaced (atomically, `cnnlab.core.files`) by one that lists it; shards it does not list
are leftovers of an interrupted run, ignored and deleted at the next commit. So an `add` killed
at any moment leaves the index as it was after its last commit, and a long build commits every
`commit_every` images: running the same build again carries on where it stopped, embedding only
images not yet in the index or whose contents changed.

A file is known by its contents, with its size and mtime as a shortcut (as git's index does):
an unchanged stat is trusted; otherwise the bytes are hashed, and a file touched or copied
again (same bytes, new mtime) is not embedded again, nor is a copy of an indexed image under
another path (a gallery moved or copied elsewhere): the embedding depends only on the bytes
and the model, so it is copied from the row that has them.

This module reads an index and holds the commit step; `cnnlab.verifier.enrol` writes (build,
add, remove, prune), one writer at a time under the folder's writer lock.
"""
from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import read_json, save_npz_atomic, write_json
from cnnlab.data.cache import file_sha256
from cnnlab.data.images import IMAGE_EXTENSIONS, decode_images, is_image_name, walk_files
from cnnlab.metrics.retrieval import FaissGallery, check_k, choose_backend, nearest_neighbours
from cnnlab.verifier.model import EmbeddingModel
from cnnlab.verifier.tally import NO_FACE, NOT_IMAGE, UNREADABLE, FileTally, LeftOut

INDEX_FILE = "index.json"
FORMAT = "cnnlab.face-index"
VERSION = 2          # rows carry their file's SHA-256; version 1 indexes (no hashes) are still read
READS = (1, 2)
COMMIT_EVERY = 1024
# More shards than this after an add are merged into one, so opening stays one read per few files.
MAX_SHARDS = 32
_COLUMNS = ("embeddings", "names", "people", "has_person", "paths", "sizes", "mtimes", "sha256")


class IndexModelMismatch(CnnlabError):
    """The index was built by a model other than the one asked to use it."""


@dataclass(frozen=True)
class GalleryFile:
    path: Path            # absolute
    name: str             # relative to the gallery folder, POSIX separators
    person: str | None    # the person folder it lies under, None for a file directly in the gallery folder
    size: int
    mtime_ns: int
    sha256: str = ""      # of the file's bytes; "" when not hashed yet or unreadable


@dataclass
class GalleryScan:
    """What lies under a gallery folder: the image files, and the files left out before any is
    opened (no image extension; sub-folders that cannot be listed)."""
    folder: Path
    images: list[GalleryFile]
    left_out: list[LeftOut] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return len(self.images) + len(self.left_out)

    def tally(self) -> FileTally:
        """A tally with the files seen and those left out so far; the caller adds the rest."""
        return FileTally(seen=self.seen, left_out=list(self.left_out))


def scan_gallery(folder: str | Path, person: str | None = None) -> GalleryScan:
    """Every file under `folder`, at any depth (hidden ones ignored). A person's images are
    every image under the person's folder: the top-level folder names the person, deeper
    folders are albums of that person. With `person`, every image under `folder`, at any
    depth, is of `person` (no sub-folder names anyone); without, images directly in `folder`
    are of no known person. Files without an image extension are left out as not images; a
    broken link is kept as an image, so that embedding reports it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CnnlabError(f"{folder} is a file: expected a folder of images (or of one folder per person)"
                          if folder.exists() else f"gallery folder not found: {folder}")
    try:
        files, unlisted = walk_files(folder)
    except OSError as exc:
        raise CnnlabError(f"cannot read the folder {folder}: {exc.strerror or exc}") from None
    left_out = [LeftOut(str(path), UNREADABLE, reason) for path, reason in unlisted]
    images = []
    for f in files:
        parts = f.relative_to(folder).parts
        if not is_image_name(f):
            left_out.append(LeftOut(str(f), NOT_IMAGE, f"not an image ({f.suffix.lower() or 'no extension'})"))
            continue
        try:
            st = f.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:  # a broken link: kept, so that decoding names it among the unreadable files
            size, mtime = -1, -1
        owner = person if person is not None else (parts[0] if len(parts) > 1 else None)
        images.append(GalleryFile(Path(os.path.abspath(f)), f.relative_to(folder).as_posix(), owner, size, mtime))
    if not images:
        found = f"{len(left_out)} file(s), none of them an image" if left_out else "nothing"
        raise CnnlabError(f"no image files in {folder} ({found}; images are read from "
                          f"{', '.join(sorted(IMAGE_EXTENSIONS))}, in the folder and in any folder under it)")
    return GalleryScan(folder, images, left_out)
def _contents(path: Path) -> str:
    """The file's SHA-256, "" if it cannot be read (decoding then reports why)."""
    try:
        return file_sha256(path)
    except OSError:
        return ""


@dataclass
class EnrolCounts:
    """What one enrolment did to an index: images per outcome, and every file under the folder
    accounted for (`files`: used = added + updated + unchanged, and each file left out)."""
    added: int = 0        # images embedded for the first time
    updated: int = 0      # images already indexed whose file changed: embedded again
    unchanged: int = 0    # images already indexed and unchanged (same bytes): skipped
    copied: int = 0       # of the added/updated: bytes already in the index, embedding copied
    total: int = 0        # rows in the index afterwards
    files: FileTally = field(default_factory=FileTally)

    @property
    def bad(self) -> list[tuple[str, str]]:
        """(path, reason) of the image files that could not be used (unreadable, or no face)."""
        return [(x.path, x.reason) for x in self.files.left_out if x.kind in (UNREADABLE, NO_FACE)]

    def summary(self) -> str:
        copied = f" ({self.copied} of these already indexed elsewhere: embedding copied)" if self.copied else ""
        used = (f"{self.files.used} used ({self.added} added, {self.updated} updated{copied}, "
                f"{self.unchanged} already indexed)")
        return f"{self.files.summary(used)}; {self.total} images in the index"

    def to_dict(self) -> dict:
        return {"added": self.added, "updated": self.updated, "unchanged": self.unchanged, "copied": self.copied,
                "total": self.total, "files": self.files.to_dict()}


def embed_files(verifier: EmbeddingModel, files: Sequence[GalleryFile],
                advance: Callable[[int], object] | None = None
                ) -> tuple[np.ndarray, list[GalleryFile], list[LeftOut]]:
    """(embeddings, the files they belong to, the files that could not be used: unreadable, or
    no face found by the model's face step). Gallery files go through training's decoder and
    bad-file report, with the model's face step; `advance(1)` is called after each file."""
    size = verifier.input_size
    faces, ok, report = decode_images([f.path for f in files], verifier.face, (size, size), advance=advance)
    refused = set(report.refused)
    left_out = [LeftOut(path, NO_FACE if path in refused else UNREADABLE, reason) for path, reason in report.bad]
    return verifier.embed_faces(faces), [files[i] for i in ok], left_out


def embed_file_batches(verifier: EmbeddingModel, files: Sequence[GalleryFile], *, batch_size: int = 64,
                       progress: bool | None = None, desc: str = "embed"
                       ) -> tuple[np.ndarray, list[GalleryFile], list[LeftOut]]:
    """`embed_files` over many files, `batch_size` at a time (bounding memory) under a progress
    bar counted in images and moved on each one (`progress`: None = a bar on a terminal, else
    periodic lines)."""
    from cnnlab.core.progress import progress_bar
    if batch_size < 1:
        raise CnnlabError(f"batch_size must be >= 1, got {batch_size}")
    parts, ok, left_out = [], [], []
    with progress_bar(total=len(files), desc=desc, unit="img", enable=progress) as bar:
        for s in range(0, len(files), batch_size):
            z, good, skipped = embed_files(verifier, files[s:s + batch_size], advance=bar.update)
            parts.append(z)
            ok += good
            left_out += skipped
    embeddings = np.concatenate(parts) if parts else np.zeros((0, verifier.embedding_dim), np.float32)
    return embeddings, ok, left_out


def _rows(embeddings: np.ndarray, files: Sequence[GalleryFile]) -> dict[str, np.ndarray]:
    return {"embeddings": np.asarray(embeddings, np.float32),
            "names": np.array([f.name for f in files], dtype=str),
            "people": np.array([f.person or "" for f in files], dtype=str),
            "has_person": np.array([f.person is not None for f in files], dtype=bool),
            "paths": np.array([str(f.path) for f in files], dtype=str),
            "sizes": np.array([f.size for f in files], dtype=np.int64),
            "mtimes": np.array([f.mtime_ns for f in files], dtype=np.int64),
            "sha256": np.array([f.sha256 for f in files], dtype="<U64")}


class GalleryIndex:
    """An opened index: `embeddings[i]` is the face in `paths[i]`, shown as `names[i]`, of
    person `people[i]` (None when the gallery folder did not say)."""

    def __init__(self, root: Path, meta: dict, columns: dict[str, np.ndarray]):
        self.root = root
        self.meta = meta
        self._columns = columns
        self.embeddings = columns["embeddings"]
        self.names = columns["names"].tolist()
        self.people = [p if has else None for p, has in zip(columns["people"].tolist(), columns["has_person"].tolist())]
        self.paths = columns["paths"].tolist()
        self._faiss = None
        self._stamp: tuple | None = None  # index.json's stat when opened from disk

    # ------------------------------------------------------------------ reading
    @classmethod
    def open(cls, root: str | Path) -> GalleryIndex:
        root = Path(root)
        if not (root / INDEX_FILE).is_file():
            raise CnnlabError(f"{root} is not a face index (no {INDEX_FILE}); "
                              "build one with `cnnlab faces index build GALLERY --model M --out INDEX`")
        try:
            meta = read_json(root / INDEX_FILE)
        except ValueError as exc:
            raise CnnlabError(f"{root / INDEX_FILE} is not valid JSON ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CnnlabError(f"{root / INDEX_FILE} is not a cnnlab face index")
        if meta.get("version") not in READS:
            raise CnnlabError(f"{root} is index format version {meta.get('version')}; this cnnlab reads "
                              f"{', '.join(map(str, READS))}")
        missing = [k for k in ("shards", "count", "embedding_dim", "fingerprint", "distance", "model")
                   if k not in meta]
        shards = meta.get("shards")
        if missing or not isinstance(shards, list) or not all(
                isinstance(x, dict) and {"file", "rows", "sha256"} <= set(x) for x in shards):
            what = f"lacks {', '.join(missing)}" if missing else "has a malformed shard list"
            raise CnnlabError(f"index {root} is damaged: {INDEX_FILE} {what}; build the index again")
        index = cls(root, meta, _load_shards(root, meta))
        index._stamp = index_stamp(root)
        return index

    def reloaded(self) -> GalleryIndex:
        """This index, or a fresh read of it when a writer has committed since it was opened
        (`index.json` replaced): a long-running reader (`faces serve`) sees additions, removals
        and prunes without a restart. An in-memory index is returned as it is."""
        if self._stamp is None or index_stamp(self.root) == self._stamp:
            return self
        return GalleryIndex.open(self.root)

    @classmethod
    def in_memory(cls, verifier: EmbeddingModel, files: Sequence[GalleryFile], embeddings: np.ndarray,
                  root: str | Path) -> GalleryIndex:
        """An index that is never written: a gallery embedded for one search."""
        meta = {**_new_meta(verifier, Path(root)), "count": len(files)}
        return cls(Path(root), meta, _rows(embeddings, files))

    @property
    def count(self) -> int:
        return int(self.embeddings.shape[0])

    def __len__(self) -> int:
        return self.count

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def model_path(self) -> Path:
        return Path(self.meta["model"])

    @property
    def distance_name(self) -> str:
        return self.meta["distance"]

    def describe(self) -> dict:
        return {"index": str(self.root), "images": self.count, "people": len({p for p in self.people if p}),
                "model": self.meta["model"], "fingerprint": self.fingerprint}

    def check_model(self, verifier: EmbeddingModel) -> None:
        """Refuse a model whose embeddings would not be comparable with the index's."""
        if verifier.fingerprint != self.fingerprint or verifier.distance_name != self.distance_name:
            raise IndexModelMismatch(
                f"index {self.root} was built with another model ({self.meta['model']}, fingerprint "
                f"{self.fingerprint}, {self.distance_name} distance) than {verifier.source} (fingerprint "
                f"{verifier.fingerprint}, {verifier.distance_name}); its embeddings cannot be compared: "
                "build an index with this model")

    def nearest(self, queries: np.ndarray, k: int, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """(Q x k distances, Q x k rows), nearest first; exact, or FAISS for large galleries."""
        check_k(k, self.count, "images in the index")
        chosen = choose_backend(backend, self.count, self.distance_name)
        gallery = self.embeddings
        if chosen == "faiss":
            if self._faiss is None:  # loading into FAISS copies the gallery: once per opened index
                self._faiss = FaissGallery(self.embeddings, self.distance_name)
            gallery = self._faiss
        d, i = nearest_neighbours(np.asarray(queries, np.float32).reshape(-1, self.embeddings.shape[1]),
                                  gallery, k, self.distance_name, backend=chosen)
        return d.numpy(), i.numpy()


def index_stamp(root: Path) -> tuple | None:
    """What changes when a commit replaces index.json (a new file: new inode and mtime)."""
    try:
        st = (root / INDEX_FILE).stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _load_shards(root: Path, meta: dict) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {c: [] for c in _COLUMNS}
    for shard in meta["shards"]:
        path = root / shard["file"]
        if not path.is_file():
            raise CnnlabError(f"index {root} is damaged: {shard['file']} is missing")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != shard["sha256"]:
            raise CnnlabError(f"index {root} is damaged: {shard['file']} does not match its checksum")
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            for c in _COLUMNS:
                if c == "sha256" and c not in arrays.files:  # a version 1 shard: contents not known
                    parts[c].append(np.full(len(arrays["embeddings"]), "", dtype="<U64"))
                else:
                    parts[c].append(arrays[c])
    dim = int(meta["embedding_dim"])
    columns = {c: np.concatenate(v) if v else _rows(np.zeros((0, dim), np.float32), [])[c] for c, v in parts.items()}
    if len(columns["embeddings"]) != meta["count"]:
        raise CnnlabError(f"index {root} is damaged: {len(columns['embeddings'])} rows, "
                          f"index.json says {meta['count']}")
    return columns


# ---------------------------------------------------------------------- writing
class _Writer:
    """Appends shards and moves the commit point (index.json)."""

    def __init__(self, root: Path, meta: dict):
        self.root, self.meta = root, meta

    def commit(self, rows: dict[str, np.ndarray] | None, *, replace_all: bool = False) -> None:
        shards = [] if replace_all else list(self.meta["shards"])
        if rows is not None and (len(rows["embeddings"]) or replace_all):
            number = int(self.meta.get("next_shard", 0))
            name = f"shard-{number:06d}.npz"
            save_npz_atomic(self.root / name, rows)
            digest = hashlib.sha256((self.root / name).read_bytes()).hexdigest()
            shards.append({"file": name, "rows": int(len(rows["embeddings"])), "sha256": digest})
            self.meta["next_shard"] = number + 1
        self.meta["shards"] = shards
        self.meta["count"] = sum(s["rows"] for s in shards)
        self.meta["version"] = VERSION  # a version 1 index is read as 2 (unknown hashes) and written as 2
        write_json(self.root / INDEX_FILE, self.meta)  # the commit point
        listed = {s["file"] for s in shards}
        for stale in self.root.glob("shard-*.npz"):
            if stale.name not in listed:
                stale.unlink(missing_ok=True)


def _new_meta(verifier: EmbeddingModel, gallery: Path) -> dict:
    return {"format": FORMAT, "version": VERSION, "fingerprint": verifier.fingerprint,
            "model": str(Path(verifier.source).resolve()), "distance": verifier.distance_name,
            "embedding_dim": verifier.embedding_dim, "preprocess": verifier.face.spec(),
            "galleries": [], "shards": [], "count": 0, "next_shard": 0}
