"""Writing a gallery index (the format: `cnnlab.verifier.index`): build, add, remove, prune.

One writer at a time. Every writer holds `.writer.lock` in the index folder (an OS file lock,
`filelock`: released when the process ends, even by kill -9) from before it reads `index.json`
until after its last commit, so it picks shard names from, and rewrites, the index as the
previous writer left it. Without the lock two concurrent `add`s each rewrote `index.json` from
their own copy, last writer winning, and deleted each other's shards. A second writer waits
(saying so) or, with `lock_timeout=0`, stops with one line. Readers never wait: `index.json` is
replaced atomically, and the shards it lists are never rewritten.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from cnnlab.core.errors import CnnlabError
from cnnlab.verifier.index import (
    _COLUMNS,
    COMMIT_EVERY,
    INDEX_FILE,
    MAX_SHARDS,
    EnrolCounts,
    GalleryIndex,
    GalleryScan,
    _contents,
    _load_shards,
    _new_meta,
    _rows,
    _Writer,
    embed_files,
    scan_gallery,
)
from cnnlab.verifier.model import EmbeddingModel

LOCK_FILE = ".writer.lock"


@contextlib.contextmanager
def writer_lock(root: str | Path, timeout: float | None = None,
                log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the index's writer lock. `timeout`: None waits as long as it takes, 0 stops at once,
    else seconds; a writer that has to wait is told so through `log` (default: this module's
    logger, which Python shows on stderr when logging is not configured)."""
    from filelock import FileLock, Timeout
    root = Path(root)
    lock = FileLock(str(root / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if timeout == 0:
            raise CnnlabError(f"index {root} is being written by another process; "
                              "run this again when it has finished") from None
        # A library says it through logging (shown on stderr when nothing is configured).
        (log or logging.getLogger(__name__).warning)(
            f"index {root} is being written by another process: waiting for it to finish")
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout)
        except Timeout:
            raise CnnlabError(f"index {root} was still being written by another process after "
                              f"{timeout:g} s; nothing was changed") from None
    try:
        yield
    finally:
        lock.release()


def _open_for_writing(root: Path) -> GalleryIndex:
    if not (root / INDEX_FILE).is_file():
        GalleryIndex.open(root)  # raises the one-line "not a face index" message
    return GalleryIndex.open(root)


def build_index(verifier: EmbeddingModel, gallery: str | Path, out: str | Path, *, person: str | None = None,
                lock_timeout: float | None = None, **options) -> EnrolCounts:
    """Index every face under `gallery`, at any depth, into the folder `out` (`person`: who
    every image under `gallery` shows; default: each top-level folder names its person,
    `scan_gallery`). An existing index there (built with the same model) is extended, not
    rebuilt: this is how an interrupted build resumes."""
    out = Path(out)
    if (out / INDEX_FILE).is_file():
        return add_to_index(out, gallery, verifier, person=person, lock_timeout=lock_timeout, **options)
    if out.exists() and (not out.is_dir() or any(p.name != LOCK_FILE for p in out.iterdir())):
        raise CnnlabError(f"{out} exists and is not a face index; choose an empty or new folder")
    scan = scan_gallery(gallery, person)  # a missing gallery is reported before anything is written
    out.mkdir(parents=True, exist_ok=True)
    with writer_lock(out, lock_timeout):
        if (out / INDEX_FILE).is_file():  # another build made it while this one waited: extend it
            index = GalleryIndex.open(out)
            index.check_model(verifier)
            return _enrol(index, _Writer(out, dict(index.meta)), verifier, Path(gallery), scan, **options)
        writer = _Writer(out, _new_meta(verifier, Path(gallery)))
        writer.commit(None)
        index = GalleryIndex(out, writer.meta, _load_shards(out, writer.meta))
        return _enrol(index, writer, verifier, Path(gallery), scan, **options)


def add_to_index(index_dir: str | Path, gallery: str | Path, verifier: EmbeddingModel, *,
                 person: str | None = None, lock_timeout: float | None = None, **options) -> EnrolCounts:
    """Add the faces under `gallery`, at any depth, that the index does not hold yet (or whose
    file changed); `person` names every one of them (see `build_index`)."""
    root = Path(index_dir)
    _open_for_writing(root).check_model(verifier)  # a wrong model is refused before waiting or scanning
    scan = scan_gallery(gallery, person)
    with writer_lock(root, lock_timeout):
        index = GalleryIndex.open(root)  # as the last writer left it
        return _enrol(index, _Writer(index.root, dict(index.meta)), verifier, Path(gallery), scan, **options)


def remove_from_index(index_dir: str | Path, *, person: str | None = None, paths: Sequence[str | Path] = (),
                      lock_timeout: float | None = None) -> tuple[int, int]:
    """Remove the rows of `person` and/or of `paths` (image files, or folders: every row under
    them). Returns (rows removed, rows left); a selection that matches nothing is an error."""
    if person is None and not paths:
        raise CnnlabError("say what to remove: --person NAME and/or image or folder paths")
    root = Path(index_dir)
    _open_for_writing(root)
    wanted = [os.path.abspath(p) for p in paths]
    with writer_lock(root, lock_timeout):
        index = GalleryIndex.open(root)
        drop = np.zeros(index.count, dtype=bool)
        if person is not None:
            drop |= np.array([p == person for p in index.people], dtype=bool)
        for target in wanted:
            drop |= np.array([p == target or p.startswith(target.rstrip(os.sep) + os.sep) for p in index.paths],
                             dtype=bool)
        if not drop.any():
            what = " and ".join(([f"person {person!r}"] if person is not None else [])
                                + ([", ".join(map(str, paths))] if paths else []))
            raise CnnlabError(f"nothing in index {root} matches {what}; nothing was removed")
        return _keep(index, ~drop)


def prune_index(index_dir: str | Path, *, lock_timeout: float | None = None) -> tuple[int, int]:
    """Remove the rows whose image files are gone (moved or deleted since they were indexed);
    a search would otherwise return them forever. Returns (rows removed, rows left)."""
    root = Path(index_dir)
    _open_for_writing(root)
    with writer_lock(root, lock_timeout):
        index = GalleryIndex.open(root)
        keep = np.array([os.path.isfile(p) for p in index.paths], dtype=bool)
        if keep.all():
            return 0, index.count
        return _keep(index, keep)


def _keep(index: GalleryIndex, keep: np.ndarray) -> tuple[int, int]:
    writer = _Writer(index.root, dict(index.meta))
    writer.commit({c: index._columns[c][keep] for c in _COLUMNS}, replace_all=True)
    return int((~keep).sum()), int(writer.meta["count"])


def _enrol(index: GalleryIndex, writer: _Writer, verifier: EmbeddingModel, gallery: Path,
           scan: GalleryScan, *, commit_every: int = COMMIT_EVERY, progress: bool | None = None,
           log: Callable[[str], None] | None = None) -> EnrolCounts:
    from cnnlab.core.progress import progress_bar
    counts = EnrolCounts(files=scan.tally())
    files = scan.images
    row_of = {p: r for r, p in enumerate(index.paths)}
    cols = index._columns
    row_with = {h: r for r, h in enumerate(cols["sha256"].tolist()) if h}  # bytes -> a row embedding them
    todo, copies, changed_rows, restat = [], [], [], {}
    for f in files:
        row = row_of.get(str(f.path))
        if row is not None and (int(cols["sizes"][row]), int(cols["mtimes"][row])) == (f.size, f.mtime_ns):
            counts.unchanged += 1
            continue
        f = replace(f, sha256=_contents(f.path))
        if row is not None and f.sha256 and f.sha256 == cols["sha256"][row]:
            restat[row] = f  # same bytes, new stat (copied or touched): only the stat is refreshed
            counts.unchanged += 1
            continue
        if row is None:
            counts.added += 1
        else:
            changed_rows.append(row)
            counts.updated += 1
        if f.sha256 in row_with:  # these bytes are indexed under another path: same embedding
            copies.append((f, row_with[f.sha256]))
        else:
            todo.append(f)
    counts.copied = len(copies)
    if str(gallery.resolve()) not in writer.meta["galleries"]:
        writer.meta["galleries"] = [*writer.meta["galleries"], str(gallery.resolve())]
    copied_rows = None
    if copies:  # read before stale rows are dropped: a dropped row may hold the bytes a copy needs
        copied_rows = _rows(cols["embeddings"][[r for _, r in copies]], [f for f, _ in copies])
    if changed_rows or restat:  # drop the stale rows, refresh stats (one rewrite); changed ones are embedded below
        keep = np.setdiff1d(np.arange(index.count), changed_rows)
        rows = {c: cols[c][keep].copy() for c in _COLUMNS}
        for i, r in enumerate(keep.tolist()):
            if r in restat:
                rows["sizes"][i], rows["mtimes"][i] = restat[r].size, restat[r].mtime_ns
        writer.commit(rows, replace_all=True)
    if copied_rows is not None:
        writer.commit(copied_rows)
    bar = progress_bar(total=len(todo), desc="embed", unit="img", enable=progress)
    try:
        for s in range(0, len(todo), max(1, commit_every)):
            z, ok, left_out = embed_files(verifier, todo[s:s + commit_every], advance=bar.update)
            counts.files.left_out += left_out
            writer.commit(_rows(z, ok))
    finally:
        bar.close()
    changed = {str(index.paths[r]) for r in changed_rows}
    for path, _ in counts.bad:  # a file that could not be used was counted as added (or updated) above
        if path in changed:
            counts.updated -= 1
        else:
            counts.added -= 1
    counts.files.used = counts.added + counts.updated + counts.unchanged
    if len(writer.meta["shards"]) > MAX_SHARDS:
        merged = _load_shards(writer.root, writer.meta)
        writer.commit(merged, replace_all=True)
    counts.total = int(writer.meta["count"])
    if log:
        log(f"index {writer.root}: {counts.summary()}")
    return counts
