"""Every file under a folder, accounted for: used, or left out with the kind of reason and the
reason itself. `index build`/`add`, `search --gallery`, `score` and `calibrate` all count the
same way, so their summaries add up to the files seen and no photo is left out without a word.

The kinds, in the order a summary names them:
    used         embedded (or, in an index, already there with the same bytes)
    no_face      an image that decodes, but where the model's face step finds no face to use
    unreadable   a file with an image extension that cannot be decoded (damaged, truncated,
                 a broken link, a folder that cannot be listed)
    not_image    a file without an image extension (`cnnlab.data.images.IMAGE_EXTENSIONS`):
                 a video, a text file, a sidecar; never opened
    no_person    (scoring and calibration only) an image directly in the folder, outside every
                 person's folder: it has no label to pair by
Hidden files and folders (names starting with ".") are not looked at and not counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

NO_FACE, UNREADABLE, NOT_IMAGE, NO_PERSON = "no_face", "unreadable", "not_image", "no_person"
KINDS = (NO_FACE, UNREADABLE, NOT_IMAGE, NO_PERSON)
# How a summary names each kind.
LABELS = {NO_FACE: "no face found", UNREADABLE: "unreadable", NOT_IMAGE: "not an image",
          NO_PERSON: "in no person's folder"}
# How many left-out files a screen summary names before "... and N more".
PREVIEW_LIMIT = 5


@dataclass(frozen=True)
class LeftOut:
    """A file that was not used: `kind` is one of KINDS, `reason` says why in words."""
    path: str
    kind: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "kind": self.kind, "reason": self.reason}


@dataclass
class FileTally:
    """`seen` files under a folder: `used` of them, and every other one in `left_out`."""
    seen: int = 0
    used: int = 0
    left_out: list[LeftOut] = field(default_factory=list)

    def add(self, path: str | Path, kind: str, reason: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.left_out.append(LeftOut(str(path), kind, reason))

    def count(self, kind: str) -> int:
        return sum(1 for item in self.left_out if item.kind == kind)

    @property
    def balanced(self) -> bool:
        """Whether used and left-out files add up to the files seen."""
        return self.used + len(self.left_out) == self.seen

    def counts(self) -> dict[str, int]:
        return {"seen": self.seen, "used": self.used, **{kind: self.count(kind) for kind in KINDS}}

    def summary(self, used: str | None = None) -> str:
        """"16 files: 12 used, 1 no face found, 2 unreadable, 1 not an image" (`used` replaces
        the used part's words, e.g. with what an index did with them). A kind that cannot occur
        here and did not (no_person outside scoring) is not named."""
        parts = [used or f"{self.used} used"]
        parts += [f"{self.count(kind)} {LABELS[kind]}" for kind in KINDS if kind != NO_PERSON or self.count(kind)]
        return f"{self.seen} file{'' if self.seen == 1 else 's'}: " + ", ".join(parts)

    def preview(self, limit: int = PREVIEW_LIMIT, listed_in: str | None = None) -> list[str]:
        """Screen lines: the first `limit` files left out with their reasons (images the model
        could not use first, then the files it never read, in KINDS order), then how many more
        and, given `listed_in` (e.g. "the --json output"), where all of them are."""
        ordered = sorted(self.left_out, key=lambda item: KINDS.index(item.kind))
        lines = [f"skipped {item.path}: {item.reason}" for item in ordered[:limit]]
        if len(self.left_out) > limit:
            lines.append(f"... and {len(self.left_out) - limit} more left out"
                         + (f" (all {len(self.left_out)} in {listed_in})" if listed_in else ""))
        return lines

    def to_dict(self) -> dict:
        return {**self.counts(), "left_out": [item.to_dict() for item in self.left_out]}
