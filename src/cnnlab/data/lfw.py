"""The LFW evaluation protocol (Huang, Ramesh, Berg and Learned-Miller 2007, "Labeled Faces in
the Wild", UMass TR 07-49; reporting rules in Huang and Learned-Miller 2014, UM-CS-2014-003).

Parsed exactly as the official README describes:
- pairs files: first line `N` (View 1, `pairsDevTrain.txt`/`pairsDevTest.txt`) or `S N`
  (View 2, `pairs.txt`: S sets); then, for each set, N matched lines `name n1 n2` followed by
  N mismatched lines `name1 n1 name2 n2`.
- people files: first line `N` then N lines `name count` (View 1), or first line `S` (sets),
  then per set a line `N` and N lines `name count` (View 2 `people.txt`).
Image `n` of `name` is `<name>/<name>_<nnnn>.jpg`. Splits are by identity, never by image.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from cnnlab.core.errors import CnnlabError
from cnnlab.data.images import path_problem

IMAGE_DIR_CANDIDATES = ("lfw-deepfunneled", "lfw_funneled", "lfw-funneled", "lfw")


def image_relpath(name: str, number: int) -> str:
    return f"{name}/{name}_{int(number):04d}.jpg"


@dataclass(frozen=True)
class Pair:
    """One protocol pair; `fold` is the View 2 set (0-9), 0 for View 1 files."""
    name1: str
    n1: int
    name2: str
    n2: int
    same: bool
    fold: int = 0
    line: int = field(default=0, compare=False)  # 1-based line in its pairs file, for errors

    @property
    def relpaths(self) -> tuple[str, str]:
        return image_relpath(self.name1, self.n1), image_relpath(self.name2, self.n2)


def _read_lines(path: Path) -> list[tuple[int, list[str]]]:
    """(1-based line number, whitespace-split fields) of the non-blank lines."""
    if not path.is_file():
        raise CnnlabError(f"LFW protocol file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return [(no, line.split()) for no, line in enumerate(f, start=1) if line.strip()]


def _int_field(path: Path, line_no: int, text: str, what: str, minimum: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise CnnlabError(f"{path}:{line_no}: {what} must be an integer, got {text!r}") from None
    if value < minimum:
        raise CnnlabError(f"{path}:{line_no}: {what} must be >= {minimum}, got {value}")
    return value


def parse_pairs(path: str | Path, image_root: str | Path | None = None) -> list[Pair]:
    """Every pair of an LFW pairs file, in file order; with `image_root`, also check that
    every referenced image exists (see `validate_pairs`)."""
    path = Path(path)
    lines = _read_lines(path)
    if not lines:
        raise CnnlabError(f"{path}: empty pairs file")
    header_no, header = lines[0]
    if len(header) == 1:
        n_sets, per_half = 1, _int_field(path, header_no, header[0], "number of matched pairs")
    elif len(header) == 2:
        n_sets = _int_field(path, header_no, header[0], "number of sets")
        per_half = _int_field(path, header_no, header[1], "number of matched pairs per set")
    else:
        raise CnnlabError(f"{path}:{header_no}: header must be 'N' or 'sets N', got {' '.join(header)!r}")

    body = lines[1:]
    expected = n_sets * 2 * per_half
    if len(body) < expected:
        last = body[-1][0] if body else header_no
        raise CnnlabError(f"{path}: header {' '.join(header)!r} promises {expected} pair lines, "
                          f"the file ends after {len(body)} (line {last})")
    if len(body) > expected:
        raise CnnlabError(f"{path}:{body[expected][0]}: extra line beyond the {expected} pair lines "
                          f"the header {' '.join(header)!r} promises")

    pairs = []
    for k, (no, fields) in enumerate(body):
        fold, within = divmod(k, 2 * per_half)
        if within < per_half:
            if len(fields) != 3:
                raise CnnlabError(f"{path}:{no}: expected a matched pair 'name n1 n2' (set {fold + 1}), "
                                  f"got {len(fields)} fields: {' '.join(fields)!r}")
            name, a, b = fields
            n1 = _int_field(path, no, a, "image number")
            n2 = _int_field(path, no, b, "image number")
            if n1 == n2:
                raise CnnlabError(f"{path}:{no}: matched pair uses image {n1} of {name} twice")
            pairs.append(Pair(name, n1, name, n2, True, fold, no))
        else:
            if len(fields) != 4:
                raise CnnlabError(f"{path}:{no}: expected a mismatched pair 'name1 n1 name2 n2' (set {fold + 1}), "
                                  f"got {len(fields)} fields: {' '.join(fields)!r}")
            name1, a, name2, b = fields
            n1 = _int_field(path, no, a, "image number")
            n2 = _int_field(path, no, b, "image number")
            if name1 == name2:
                raise CnnlabError(f"{path}:{no}: mismatched pair names the same person {name1} twice")
            pairs.append(Pair(name1, n1, name2, n2, False, fold, no))
    if image_root is not None:
        validate_pairs(pairs, image_root, source=path)
    return pairs


def validate_pairs(pairs: Sequence[Pair], image_root: str | Path, source: str | Path = "pairs") -> None:
    """Raise a CnnlabError naming the pairs file, line and path of the first image that is
    missing (or a broken link, a symlink loop, a folder). Contents are the decoder's business:
    `cnnlab.tasks.faces` checks that every scored pair's images decoded before training."""
    image_root = Path(image_root)
    for pair in pairs:
        for rel in pair.relpaths:
            problem = path_problem(image_root / rel)
            if problem is not None:
                raise CnnlabError(f"{source}:{pair.line}: image {image_root / rel} {problem}")


def parse_people(path: str | Path) -> list[dict[str, int]]:
    """The sets of a people file, each an ordered {name: number of images}; one set for
    View 1 files (`peopleDevTrain.txt`), ten for View 2 (`people.txt`)."""
    path = Path(path)
    lines = _read_lines(path)
    if not lines:
        raise CnnlabError(f"{path}: empty people file")
    first_no, first = lines[0]
    if len(first) != 1:
        raise CnnlabError(f"{path}:{first_no}: first line must be a single count, got {' '.join(first)!r}")
    count = _int_field(path, first_no, first[0], "count")
    # View 2 puts each set's size on a line of its own; View 1 goes straight to `name count`.
    multi_set = len(lines) > 1 and len(lines[1][1]) == 1
    cursor = 1
    sets: list[dict[str, int]] = []
    seen: dict[str, int] = {}
    for s in range(count if multi_set else 1):
        if multi_set:
            if cursor >= len(lines):
                raise CnnlabError(f"{path}: file ends before set {s + 1} of {count}")
            no, fields = lines[cursor]
            if len(fields) != 1:
                raise CnnlabError(f"{path}:{no}: expected the number of people in set {s + 1}, "
                                  f"got {' '.join(fields)!r}")
            n_people = _int_field(path, no, fields[0], "number of people")
            cursor += 1
        else:
            n_people = count
        people: dict[str, int] = {}
        for _ in range(n_people):
            if cursor >= len(lines):
                raise CnnlabError(f"{path}: file ends inside set {s + 1} (expected {n_people} people)")
            no, fields = lines[cursor]
            if len(fields) != 2:
                raise CnnlabError(f"{path}:{no}: expected 'name count', got {' '.join(fields)!r}")
            name = fields[0]
            if name in seen:
                raise CnnlabError(f"{path}:{no}: {name} is listed twice (first on line {seen[name]})")
            seen[name] = no
            people[name] = _int_field(path, no, fields[1], "image count")
            cursor += 1
        sets.append(people)
    if cursor < len(lines):
        raise CnnlabError(f"{path}:{lines[cursor][0]}: extra line after the last set")
    return sets


@dataclass(frozen=True)
class IdentitySplit:
    """Train people vs test people (disjoint by construction) and the pairs to report on."""
    name: str
    train_people: tuple[str, ...]
    test_people: tuple[str, ...]
    test_pairs: tuple[Pair, ...]
    train_pairs: tuple[Pair, ...] = ()

    def __post_init__(self):
        overlap = set(self.train_people) & set(self.test_people)
        if overlap:
            raise CnnlabError(f"{self.name}: {len(overlap)} people in both train and test, e.g. {sorted(overlap)[:3]}")
        for kind, pairs, people in (("test", self.test_pairs, self.test_people),
                                    ("train", self.train_pairs, self.train_people)):
            allowed = set(people)
            strays = {n for p in pairs for n in (p.name1, p.name2) if n not in allowed}
            if strays:
                raise CnnlabError(f"{self.name}: {kind} pairs use people outside the {kind} set, "
                                  f"e.g. {sorted(strays)[:3]}")


def split_people(names: Sequence[str], counts: Sequence[int], fraction: float, seed: int
                 ) -> tuple[list[str], list[str]]:
    """Seeded (keep, held_out) split of people, stratified so the held-out people get their
    share of multi-image people (otherwise a small split may have no matched pairs)."""
    if not 0.0 < fraction < 1.0:
        raise CnnlabError(f"validation fraction must be in (0, 1), got {fraction}")
    names = list(names)
    counts = np.asarray(counts)
    rng = np.random.default_rng(seed)
    held: list[str] = []
    for group in (np.flatnonzero(counts >= 2), np.flatnonzero(counts < 2)):
        order = group[rng.permutation(len(group))]
        held.extend(names[i] for i in order[:int(round(fraction * len(group)))])
    held_set = set(held)
    return sorted(n for n in names if n not in held_set), sorted(held_set)


class LFWProtocol:
    """The official LFW files under `root` (pairs*.txt, people*.txt beside the image folder).

    Every pairs file is validated on first use: each referenced image must exist.
    """

    def __init__(self, root: str | Path, *, image_dir: str | Path | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise CnnlabError(f"LFW folder not found: {self.root}")
        if image_dir is not None:
            self.image_root = Path(image_dir) if Path(image_dir).is_absolute() else self.root / image_dir
        else:
            found = [self.root / c for c in IMAGE_DIR_CANDIDATES if (self.root / c).is_dir()]
            if not found:
                raise CnnlabError(f"no LFW image folder in {self.root} (looked for {', '.join(IMAGE_DIR_CANDIDATES)})")
            self.image_root = found[0]
        if not self.image_root.is_dir():
            raise CnnlabError(f"LFW image folder not found: {self.image_root}")

    def _pairs(self, filename: str) -> list[Pair]:
        return parse_pairs(self.root / filename, image_root=self.image_root)

    def _people(self, filename: str) -> list[dict[str, int]]:
        return parse_people(self.root / filename)

    @cached_property
    def view1_train_pairs(self) -> list[Pair]:
        return self._pairs("pairsDevTrain.txt")

    @cached_property
    def view1_test_pairs(self) -> list[Pair]:
        return self._pairs("pairsDevTest.txt")

    @cached_property
    def view1_train_people(self) -> dict[str, int]:
        return self._single_set("peopleDevTrain.txt")

    @cached_property
    def view1_test_people(self) -> dict[str, int]:
        return self._single_set("peopleDevTest.txt")

    @cached_property
    def view2_pairs(self) -> list[Pair]:
        return self._pairs("pairs.txt")

    @cached_property
    def view2_people(self) -> list[dict[str, int]]:
        sets = self._people("people.txt")
        n_folds = 1 + max(p.fold for p in self.view2_pairs)
        if len(sets) != n_folds:
            raise CnnlabError(f"{self.root / 'people.txt'} has {len(sets)} sets but pairs.txt has {n_folds}")
        return sets

    def _single_set(self, filename: str) -> dict[str, int]:
        sets = self._people(filename)
        if len(sets) != 1:
            raise CnnlabError(f"{self.root / filename}: expected one set of people, found {len(sets)}")
        return sets[0]

    @property
    def num_folds(self) -> int:
        return len(self.view2_people)

    def view1(self) -> IdentitySplit:
        """Development split: DevTrain people train, the 1,000 DevTest pairs test."""
        return IdentitySplit("LFW View 1", tuple(self.view1_train_people), tuple(self.view1_test_people),
                             tuple(self.view1_test_pairs), tuple(self.view1_train_pairs))

    def validation_people(self, fraction: float = 0.1, seed: int = 0, limit: int = 0
                          ) -> tuple[list[str], list[str]]:
        """(fit people, validation people): a seeded split of View 1's training people for
        tuning and model selection, so DevTest is never looked at while choosing. With
        `limit`, of a seeded sample of that many of them with two or more images (a smaller
        run; people with one image only ever make different-person pairs)."""
        people = self.view1_train_people
        if limit:
            multi = sorted(n for n, c in people.items() if c >= 2)
            if limit > len(multi):
                raise CnnlabError(f"train_people={limit} but View 1 has {len(multi)} training people "
                                  "with two or more images")
            # Its own stream (seed, 1): the sample does not shift with the validation draw.
            chosen = np.random.default_rng([seed, 1]).permutation(len(multi))[:limit]
            people = {multi[i]: people[multi[i]] for i in sorted(chosen)}
        return split_people(list(people), list(people.values()), fraction, seed)

    def view2_fold(self, fold: int) -> IdentitySplit:
        """Fold `fold` (0-based) tests on its 600 pairs; the other sets' people train."""
        if not 0 <= fold < self.num_folds:
            raise CnnlabError(f"View 2 fold must be in 0..{self.num_folds - 1}, got {fold}")
        train = tuple(n for k, s in enumerate(self.view2_people) if k != fold for n in s)
        return IdentitySplit(f"LFW View 2 fold {fold + 1}", train, tuple(self.view2_people[fold]),
                             tuple(p for p in self.view2_pairs if p.fold == fold))
