"""Writing a gallery index: one writer at a time (two processes adding at once lose nothing),
remove and prune, readers that see commits without reopening, and damaged index.json files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cnnlab.cli import main
from cnnlab.core.errors import CnnlabError
from cnnlab.verifier import FaceVerifier, GalleryIndex, add_to_index, build_index, prune_index, remove_from_index
from cnnlab.verifier.enrol import writer_lock
from face_models import build_tiny_model, make_gallery

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("writers")
    model = build_tiny_model(root / "model.pt", seed=0)
    gallery = make_gallery(root / "gallery", people=3, per_person=2, seed=1)
    return model, gallery, root


@pytest.fixture(scope="module")
def verifier(setup):
    return FaceVerifier.load(setup[0], device="cpu")


# A `cnnlab` process that waits for a start signal (a file), so two start together, and whose
# every commit takes 0.2 s longer: the window in which unlocked writers overwrite each other.
SLOW_WRITER = """
import sys, time
from pathlib import Path
import cnnlab.verifier.index as index
commit = index._Writer.commit
def slow(self, *a, **k):
    time.sleep(0.2)
    return commit(self, *a, **k)
index._Writer.commit = slow
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.01)
from cnnlab.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _cli(go: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(go), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_processes_adding_at_once_lose_nothing(setup, verifier, tmp_path):
    model, gallery, _ = setup
    build_index(verifier, gallery, tmp_path / "idx", progress=False)
    first = make_gallery(tmp_path / "first", people=3, per_person=4, seed=11)
    second = make_gallery(tmp_path / "second", people=3, per_person=4, seed=12)
    # Commit after every image: without the writer lock the two interleave their commits,
    # each rewriting index.json from its own copy and deleting the other's shards.
    go = tmp_path / "go"
    procs = [_cli(go, "faces", "index", "add", str(tmp_path / "idx"), str(folder), "--commit-every", "1",
                  "--no-progress") for folder in (first, second)]
    time.sleep(3)  # both have imported cnnlab and wait at the start line
    go.write_text("")
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    index = GalleryIndex.open(tmp_path / "idx")
    expected = {str(f.resolve()) for folder in (gallery, first, second) for f in folder.rglob("*.png")}
    assert index.count == len(expected) == 30
    assert sorted(index.paths) == sorted(expected)  # every image present, once
    listed = {s["file"] for s in json.loads((tmp_path / "idx" / "index.json").read_text())["shards"]}
    assert {p.name for p in (tmp_path / "idx").glob("shard-*.npz")} == listed


@pytest.fixture
def held(tmp_path):
    """Hold an index's writer lock from another thread, as another writer would."""
    threads = []

    def hold(root, seconds):
        ready = threading.Event()

        def run():
            with writer_lock(root):
                ready.set()
                time.sleep(seconds)

        thread = threading.Thread(target=run)
        thread.start()
        threads.append(thread)
        assert ready.wait(30)

    yield hold
    for thread in threads:
        thread.join()


def test_a_second_writer_stops_with_one_line_when_told_not_to_wait(setup, verifier, tmp_path, capsys, held):
    _, gallery, _ = setup
    build_index(verifier, gallery, tmp_path / "idx", progress=False)
    extra = make_gallery(tmp_path / "extra", people=1, per_person=2, seed=3)
    held(tmp_path / "idx", 1.5)
    with pytest.raises(CnnlabError, match="being written by another process; run this again when it has finished"):
        add_to_index(tmp_path / "idx", extra, verifier, lock_timeout=0, progress=False)
    assert main(["faces", "index", "prune", str(tmp_path / "idx"), "--no-wait"]) == 2
    assert capsys.readouterr().err.count("being written by another process") == 1
    assert GalleryIndex.open(tmp_path / "idx").count == 6  # nothing changed


def test_a_waiting_writer_says_so_then_goes_on(setup, verifier, tmp_path, held):
    _, gallery, _ = setup
    build_index(verifier, gallery, tmp_path / "idx", progress=False)
    said = []
    held(tmp_path / "idx", 0.5)
    started = time.perf_counter()
    with writer_lock(tmp_path / "idx", log=said.append):
        waited = time.perf_counter() - started
    assert waited >= 0.3
    assert said == [f"index {tmp_path / 'idx'} is being written by another process: waiting for it to finish"]
    held(tmp_path / "idx", 1.5)
    with pytest.raises(CnnlabError, match="still being written by another process after 0.2 s; nothing was changed"):
        with writer_lock(tmp_path / "idx", timeout=0.2, log=said.append):
            pass


def test_remove_by_person_and_by_path_and_prune(setup, verifier, tmp_path, capsys):
    model, _, _ = setup
    gallery = make_gallery(tmp_path / "g", people=3, per_person=2, flat=1, seed=4)
    build_index(verifier, gallery, tmp_path / "idx", progress=False)
    assert main(["faces", "index", "remove", str(tmp_path / "idx"), "--person", "person01"]) == 0
    assert capsys.readouterr().out.strip() == "2 removed; 5 images in the index"
    index = GalleryIndex.open(tmp_path / "idx")
    assert "person01" not in index.people and index.count == 5
    assert main(["faces", "index", "remove", str(tmp_path / "idx"), str(gallery / "person00"),
                 str(gallery / "loose0.png")]) == 0
    assert GalleryIndex.open(tmp_path / "idx").people == ["person02", "person02"]
    assert main(["faces", "index", "remove", str(tmp_path / "idx"), "--person", "nobody"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"cnnlab: error: nothing in index {tmp_path / 'idx'} matches person 'nobody'; "
                           "nothing was removed")
    (gallery / "person02" / "0.png").unlink()  # gone from disk: a search would return it forever
    assert prune_index(tmp_path / "idx") == (1, 1)
    assert GalleryIndex.open(tmp_path / "idx").paths == [str((gallery / "person02" / "1.png").resolve())]
    assert prune_index(tmp_path / "idx") == (0, 1)  # nothing gone: nothing rewritten
    with pytest.raises(CnnlabError, match="say what to remove"):
        remove_from_index(tmp_path / "idx")
    assert main(["faces", "index", "prune", str(tmp_path / "nothing-here")]) == 2


def test_an_open_index_sees_later_commits_when_reloaded(setup, verifier, tmp_path):
    _, gallery, _ = setup
    build_index(verifier, gallery, tmp_path / "idx", progress=False)
    index = GalleryIndex.open(tmp_path / "idx")
    assert index.reloaded() is index  # nothing committed since: no re-read
    add_to_index(tmp_path / "idx", make_gallery(tmp_path / "more", people=1, per_person=3, seed=9), verifier,
                 progress=False)
    fresh = index.reloaded()
    assert (index.count, fresh.count) == (6, 9)
    remove_from_index(tmp_path / "idx", person="person00")
    assert fresh.reloaded().count == 4  # person00 of both galleries


@pytest.mark.parametrize("meta_change, message", [
    (lambda m: m.pop("shards"), "index.json lacks shards; build the index again"),
    (lambda m: m.pop("count"), "index.json lacks count"),
    (lambda m: m.update(shards=[{"file": "shard-000000.npz"}]), "index.json has a malformed shard list"),
])
def test_an_index_json_missing_keys_is_damaged_not_a_crash(setup, verifier, tmp_path, capsys, meta_change, message):
    _, gallery, _ = setup
    build_index(verifier, gallery, tmp_path / "idx", progress=False)
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    meta_change(meta)
    (tmp_path / "idx" / "index.json").write_text(json.dumps(meta))
    assert main(["faces", "search", str(tmp_path / "idx"), str(gallery / "person00" / "0.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cnnlab: error: index {tmp_path / 'idx'} is damaged: {message}") and err.count("\n") == 1


def test_output_paths_are_checked_before_any_work(setup, tmp_path, capsys, monkeypatch):
    model, gallery, _ = setup
    import cnnlab.cli.faces_use as faces_use

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(faces_use, "load_verifier", no_model)
    (tmp_path / "a-file").write_text("x")
    assert main(["faces", "score", str(gallery), "--model", str(model), "--out", str(tmp_path)]) == 2
    assert main(["faces", "score", str(gallery), "--model", str(model), "--out",
                 str(tmp_path / "a-file" / "r.json")]) == 2
    assert main(["faces", "index", "build", str(gallery), "--model", str(model), "--out",
                 str(tmp_path / "a-file" / "idx")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors[0] == f"cnnlab: error: --out {tmp_path} is an existing folder, not a file"
    assert len(errors) == 3 and all(e.startswith("cnnlab: error: --out") for e in errors)
