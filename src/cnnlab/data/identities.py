"""Face collections labelled by identity, read as their users keep them on disk: what a face
model trains on beside LFW's training people, or validates on when the question is "faces
that are not LFW's".

- Identity folders, `DIR/<person>/<image>` (the layout `faces score` reads; AT&T/ORL's
  `sN/M.pgm`, Samaria and Harter 1994).
- CelebA's official layout (Liu et al. 2015, "Deep Learning Face Attributes in the Wild"):
  `DIR/img_align_celeba/NNNNNN.jpg` and `DIR/identity_CelebA.txt`, one line
  `NNNNNN.jpg <identity number>` per image. Its people are the celebrities of CelebFaces+,
  which Sun et al. 2014 (DeepID2) describe as disjoint from LFW's.

A source is written `celeba:PATH`, `folders:PATH`, or a bare `PATH` whose layout says which
(an `identity_CelebA.txt` or `img_align_celeba/` in it: CelebA; else identity folders). `{data}`
in PATH is the data root (`cnnlab.core.env.data_root`), so a preset can name a data set wherever
the data lives. Images go through the one face step and cache (`cnnlab.data.faces.load_face_files`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cnnlab.core.env import data_root
from cnnlab.core.errors import CnnlabError
from cnnlab.data.cache import ArrayCache
from cnnlab.data.faces import FaceDataset, FacePreprocess, load_face_files, scan_identity_folders
from cnnlab.data.images import DecodeReport, is_image_name, list_folders, list_images, walk_files

CELEBA_IDENTITY_FILE = "identity_CelebA.txt"
CELEBA_IMAGE_DIR = "img_align_celeba"
KINDS = ("celeba", "folders")
SOURCE_FORMS = "celeba:PATH, folders:PATH or PATH"
DATA_ROOT_MARK = "{data}"


def with_data_root(text: str) -> str:
    """A source as written, with `{data}` replaced by the data root (`$CNNLAB_DATA`)."""
    return text.replace(DATA_ROOT_MARK, str(data_root()[0])) if DATA_ROOT_MARK in text else text


@dataclass(frozen=True)
class IdentitySource:
    """A collection of identity-labelled faces: its layout (`kind`, None until `resolved`
    reads it from the folder) and its folder."""
    kind: str | None
    root: Path

    @classmethod
    def parse(cls, text: str) -> IdentitySource:
        """`celeba:PATH`, `folders:PATH` or `PATH` (the layout detected when loaded). A prefix
        that is not a kind is part of the path (`C:\\faces` stays a path)."""
        head, sep, tail = str(text).partition(":")
        kind, path = (head, tail) if sep and head in KINDS else (None, str(text))
        if not path.strip():
            raise CnnlabError(f"identity source {text!r} names no folder ({SOURCE_FORMS})")
        return cls(kind, Path(path.strip()).expanduser())

    def resolved(self) -> IdentitySource:
        """This source with its folder checked and its kind known."""
        if not self.root.is_dir():
            raise CnnlabError(f"identity source folder not found: {self.root} ({SOURCE_FORMS})")
        if self.kind is not None:
            return self
        celeba = (self.root / CELEBA_IDENTITY_FILE).exists() or (self.root / CELEBA_IMAGE_DIR).is_dir()
        return IdentitySource("celeba" if celeba else "folders", self.root)

    @property
    def name(self) -> str:
        """A short name: the folder's (`celeba`, `att-faces`)."""
        return self.root.resolve().name or self.kind or "faces"

    def same_folder(self, other: IdentitySource) -> bool:
        return self.root.resolve() == other.root.resolve()

    def __str__(self) -> str:
        return f"{self.kind}:{self.root}" if self.kind else str(self.root)


@dataclass
class SourceScan:
    """What a source lists: (person, path relative to the source's folder) per image, and for
    CelebA how many images its identity file lists that are not in its image folder."""
    files: list[tuple[str, str]]
    listed_missing: int = 0


def scan_celeba(root: str | Path) -> SourceScan:
    """The images of CelebA's layout under `root` that the identity file names. Images it lists
    but the folder lacks (a partial copy) are counted and left out; a malformed line is a
    one-line error naming the file and line."""
    root = Path(root)
    identity_file, image_dir = root / CELEBA_IDENTITY_FILE, root / CELEBA_IMAGE_DIR
    layout = f"CelebA's layout is {CELEBA_IMAGE_DIR}/ and {CELEBA_IDENTITY_FILE} in one folder"
    if not identity_file.is_file():
        raise CnnlabError(f"CelebA identity file not found: {identity_file} ({layout})")
    if not image_dir.is_dir():
        raise CnnlabError(f"CelebA image folder not found: {image_dir} ({layout})")
    present = {p.name for p in list_images(image_dir)}
    person_of: dict[str, str] = {}
    with open(identity_file, encoding="utf-8") as f:
        for no, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].isdigit():
                raise CnnlabError(f"{identity_file}:{no}: expected 'NNNNNN.jpg <identity number>', "
                                  f"got {line.strip()!r}")
            name, person = fields
            if person_of.setdefault(name, person) != person:
                raise CnnlabError(f"{identity_file}:{no}: {name} is listed twice, with identities "
                                  f"{person_of[name]} and {person}")
    files = sorted((person, f"{CELEBA_IMAGE_DIR}/{name}") for name, person in person_of.items() if name in present)
    if not files:
        raise CnnlabError(f"none of the {len(person_of)} images {identity_file} lists is in {image_dir}")
    return SourceScan(sorted(files, key=lambda f: f[1]), listed_missing=len(person_of) - len(files))


def scan_source(source: IdentitySource) -> SourceScan:
    source = source.resolved()
    if source.kind == "celeba":
        return scan_celeba(source.root)
    return SourceScan(scan_albums(source.root))


def scan_albums(root: Path) -> list[tuple[str, str]]:
    """(person, relative path) of every image under each top-level folder of `root`, at any
    depth: a person's deeper folders are albums of that person, as `faces score` and the gallery
    index read them (`cnnlab.verifier.index.scan_gallery`)."""
    files = []
    for person in list_folders(root):
        found, _ = walk_files(root / person)
        files += [(person, path.relative_to(root).as_posix()) for path in found if is_image_name(path)]
    if not files:
        scan_identity_folders(root)  # no images in person folders: its one-line error says why
    return files


@dataclass
class LoadedSource:
    """A source decoded through the face step: its dataset (people named as the source names
    them), the decoder's report, and what the scan counted."""
    source: IdentitySource
    dataset: FaceDataset
    report: DecodeReport
    listed_missing: int = 0

    def record(self) -> dict:
        """What a run records about the source (sources, people, images)."""
        counts = self.dataset.images_per_person()
        return {"source": str(self.source), "kind": self.source.kind, "root": str(self.source.root),
                "people": self.dataset.num_people, "people_2plus": int((counts >= 2).sum()),
                "images": len(self.dataset), "skipped_files": len(self.report.bad),
                "fallback_files": len(self.report.fallback), "listed_missing": self.listed_missing}


def load_source(source: IdentitySource | str, spec: FacePreprocess, *, progress: bool | None = None,
                cache: ArrayCache | None = None) -> LoadedSource:
    """Every image of `source` through the face step `spec` (decoded once into the shared cache;
    unreadable files skipped and reported, as for LFW)."""
    source = (IdentitySource.parse(source) if isinstance(source, str) else source).resolved()
    scan = scan_source(source)
    dataset, report = load_face_files(source.root, scan.files, spec, progress=progress, cache=cache)
    return LoadedSource(source, dataset, report, scan.listed_missing)
