"""The persistent gallery index: build, add (incremental and atomic), search (exact and FAISS),
refusal of another model's index, and the `faces index` / `faces search` commands."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch

import cnnlab.verifier.index as index_module
from cnnlab.cli import main
from cnnlab.core.errors import CnnlabError
from cnnlab.metrics import retrieval
from cnnlab.metrics.retrieval import faiss_available, nearest_neighbours
from cnnlab.verifier import FaceVerifier, GalleryFile, GalleryIndex, IndexModelMismatch, add_to_index, build_index
from face_models import build_tiny_model, make_gallery


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("index")
    model = build_tiny_model(root / "model.pt", seed=0)
    other = build_tiny_model(root / "other.pt", seed=1)
    gallery = make_gallery(root / "gallery", people=4, per_person=3, flat=2, seed=1)
    extra = make_gallery(root / "more", people=2, per_person=3, seed=2)
    return model, other, gallery, extra


@pytest.fixture(scope="module")
def verifier(setup):
    return FaceVerifier.load(setup[0], device="cpu")


def test_every_enrolled_image_is_its_own_top1(setup, verifier, tmp_path):
    _, _, gallery, _ = setup
    report = build_index(verifier, gallery, tmp_path / "idx", progress=False)
    assert (report.added, report.total, report.bad) == (14, 14, [])
    index = GalleryIndex.open(tmp_path / "idx")
    assert index.count == 14 and index.fingerprint == verifier.fingerprint
    assert index.people.count(None) == 2 and "person00/0.png" in index.names and "loose1.png" in index.names
    for name in ("person00/0.png", "person03/2.png", "loose0.png"):
        top = verifier.identify(gallery / name, index, k=3)
        assert [m.rank for m in top] == [1, 2, 3]
        assert top[0].name == name and top[0].distance < 1e-3 and top[0].same
        assert top[0].distance <= top[1].distance <= top[2].distance
    assert verifier.identify(gallery / "person01/1.png", index, k=1)[0].person == "person01"


def test_another_models_index_is_refused(setup, verifier, tmp_path, capsys):
    model, other, gallery, extra = setup
    build_index(verifier, gallery, tmp_path / "idx", progress=False)
    index = GalleryIndex.open(tmp_path / "idx")
    stranger = FaceVerifier.load(other, device="cpu", runtime="torch")
    with pytest.raises(IndexModelMismatch, match="built with another model"):
        stranger.identify(gallery / "loose0.png", index)
    with pytest.raises(IndexModelMismatch):
        add_to_index(tmp_path / "idx", extra, stranger)
    assert main(["faces", "search", str(tmp_path / "idx"), str(gallery / "loose0.png"), "--model", str(other)]) == 2
    assert main(["faces", "index", "add", str(tmp_path / "idx"), str(extra), "--model", str(other)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all("built with another model" in e for e in errors)
    assert GalleryIndex.open(tmp_path / "idx").count == 14  # untouched


def test_add_is_incremental(setup, verifier, tmp_path):
    _, _, gallery, extra = setup
    extra = shutil.copytree(extra, tmp_path / "more")  # this test edits its files
    build_index(verifier, gallery, tmp_path / "idx", progress=False)
    report = add_to_index(tmp_path / "idx", extra, verifier, progress=False)
    assert (report.added, report.unchanged, report.total) == (6, 0, 20)
    again = add_to_index(tmp_path / "idx", extra, verifier, progress=False)
    assert (again.added, again.unchanged, again.updated, again.total) == (0, 6, 0, 20)
    # A changed file (new pixels, new mtime) is embedded again, not duplicated.
    changed = extra / "person00" / "0.png"
    before = GalleryIndex.open(tmp_path / "idx")
    old = before.embeddings[before.paths.index(str(changed))].copy()
    (extra / "person01" / "1.png").replace(changed)
    os.utime(changed, ns=(1, 1))
    third = add_to_index(tmp_path / "idx", extra, verifier, progress=False)
    # person01/1.png is gone from the folder: it stays enrolled (the index keeps what it was given).
    assert (third.added, third.updated, third.unchanged, third.total) == (0, 1, 4, 20)
    after = GalleryIndex.open(tmp_path / "idx")
    assert after.paths.count(str(changed)) == 1 and len(set(after.paths)) == after.count
    assert not np.allclose(after.embeddings[after.paths.index(str(changed))], old)


def _count_embeddings(verifier, monkeypatch) -> list[int]:
    real, calls = verifier.embed_faces, []

    def counted(faces):
        calls.append(len(faces))
        return real(faces)

    monkeypatch.setattr(verifier, "embed_faces", counted)
    return calls


def test_files_are_known_by_their_bytes(setup, tmp_path, monkeypatch):
    model, _, gallery, _ = setup
    verifier = FaceVerifier.load(model, device="cpu", runtime="torch")
    build_index(verifier, gallery, tmp_path / "idx", progress=False)
    calls = _count_embeddings(verifier, monkeypatch)
    # A copy of the gallery elsewhere (new paths, new mtimes): its rows reuse the embeddings.
    copy = shutil.copytree(gallery, tmp_path / "copy", copy_function=shutil.copyfile)
    report = add_to_index(tmp_path / "idx", copy, verifier, progress=False)
    assert (report.added, report.copied, report.total, sum(calls)) == (14, 14, 28, 0)
    assert "(14 of these already indexed elsewhere: embedding copied)" in report.summary()
    index = GalleryIndex.open(tmp_path / "idx")
    for name in ("person00/0.png", "loose1.png"):
        np.testing.assert_array_equal(index.embeddings[index.paths.index(str(gallery / name))],
                                      index.embeddings[index.paths.index(str(copy / name))])
    # Touched (same bytes, new mtime): not embedded, and the stored stat is refreshed.
    touched = copy / "person01" / "2.png"
    os.utime(touched, ns=(5 * 10**18, 5 * 10**18))
    again = add_to_index(tmp_path / "idx", copy, verifier, progress=False)
    assert (again.added, again.updated, again.unchanged, again.copied, sum(calls)) == (0, 0, 14, 0, 0)
    row = GalleryIndex.open(tmp_path / "idx").paths.index(str(touched))
    assert int(GalleryIndex.open(tmp_path / "idx")._columns["mtimes"][row]) == 5 * 10**18
    # New bytes in a copied file: embedded again, once; its twin in the original gallery keeps its row.
    shutil.copyfile(gallery / "person02" / "0.png", copy / "person00" / "0.png")
    third = add_to_index(tmp_path / "idx", copy, verifier, progress=False)
    assert (third.updated, third.copied, third.unchanged, sum(calls)) == (1, 1, 13, 0)  # person02/0's bytes
    (copy / "person00" / "0.png").write_bytes((gallery / "person03" / "1.png").read_bytes()[:-1] + b"\0")
    fourth = add_to_index(tmp_path / "idx", copy, verifier, progress=False)
    index = GalleryIndex.open(tmp_path / "idx")
    assert (fourth.updated, fourth.copied, calls) == (1, 0, [1]) and index.count == 28
    assert len(set(index.paths)) == 28 and index.paths.count(str(gallery / "person00" / "0.png")) == 1


def test_a_version_1_index_is_read_and_extended(setup, verifier, tmp_path, monkeypatch):
    """Version 1 had no per-row hash: its rows are trusted by stat, as before, and the first
    commit writes version 2."""
    _, _, gallery, extra = setup
    build_index(verifier, gallery, tmp_path / "idx", progress=False)
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    (shard,) = meta["shards"]
    with np.load(tmp_path / "idx" / shard["file"]) as arrays:
        old = {c: arrays[c] for c in arrays.files if c != "sha256"}
    np.savez(tmp_path / "idx" / shard["file"], **old)
    shard["sha256"] = hashlib.sha256((tmp_path / "idx" / shard["file"]).read_bytes()).hexdigest()
    (tmp_path / "idx" / "index.json").write_text(json.dumps({**meta, "version": 1}))
    index = GalleryIndex.open(tmp_path / "idx")
    assert index.count == 14 and set(index._columns["sha256"].tolist()) == {""}
    calls = _count_embeddings(verifier, monkeypatch)
    same = add_to_index(tmp_path / "idx", gallery, verifier, progress=False)
    assert (same.unchanged, sum(calls)) == (14, 0)
    more = add_to_index(tmp_path / "idx", extra, verifier, progress=False)
    assert (more.added, more.copied, sum(calls)) == (6, 0, 6)
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["version"] == index_module.VERSION == 2
    assert GalleryIndex.open(tmp_path / "idx").count == 20


def test_an_interrupted_add_leaves_a_readable_index_and_the_rerun_finishes(setup, tmp_path, monkeypatch):
    model, _, gallery, extra = setup
    verifier = FaceVerifier.load(model, device="cpu", runtime="torch")
    build_index(verifier, gallery, tmp_path / "idx", progress=False)
    real, calls = verifier.embed_faces, []

    def dies_on_the_second_chunk(faces):
        calls.append(len(faces))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(faces)

    monkeypatch.setattr(verifier, "embed_faces", dies_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        add_to_index(tmp_path / "idx", extra, verifier, commit_every=2, progress=False)
    assert GalleryIndex.open(tmp_path / "idx").count == 16  # the first chunk of 2 was committed
    monkeypatch.undo()
    report = add_to_index(tmp_path / "idx", extra, verifier, commit_every=2, progress=False)
    assert (report.added, report.unchanged, report.total) == (4, 2, 20)
    index = GalleryIndex.open(tmp_path / "idx")
    assert len(set(index.paths)) == 20


def test_a_kill_at_the_commit_point_keeps_the_previous_index(setup, verifier, tmp_path, monkeypatch):
    _, _, gallery, extra = setup
    build_index(verifier, gallery, tmp_path / "idx", progress=False)

    def killed(path, data):
        raise KeyboardInterrupt  # the moment index.json would have been replaced

    monkeypatch.setattr(index_module, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        add_to_index(tmp_path / "idx", extra, verifier, progress=False)
    monkeypatch.undo()
    index = GalleryIndex.open(tmp_path / "idx")  # the new shard is there but not listed: ignored
    assert index.count == 14 and not any(str(extra) in p for p in index.paths)
    add_to_index(tmp_path / "idx", extra, verifier, progress=False)
    listed = {s["file"] for s in json.loads((tmp_path / "idx" / "index.json").read_text())["shards"]}
    assert {p.name for p in (tmp_path / "idx").glob("shard-*.npz")} == listed  # the leftover is gone
    # No temporary files left behind; the writer lock's file stays (an OS lock lives on it).
    assert [p.name for p in (tmp_path / "idx").glob(".*")] == [".writer.lock"]


def test_damaged_or_foreign_index_folders_are_clear_errors(setup, verifier, tmp_path):
    _, _, gallery, _ = setup
    with pytest.raises(CnnlabError, match="not a face index"):
        GalleryIndex.open(tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(CnnlabError, match="not a face index; choose"):
        build_index(verifier, gallery, tmp_path / "busy")
    build_index(verifier, gallery, tmp_path / "idx", progress=False)
    shard = next((tmp_path / "idx").glob("shard-*.npz"))
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CnnlabError, match="damaged"):
        GalleryIndex.open(tmp_path / "idx")


def test_bad_files_are_reported_and_skipped(setup, verifier, tmp_path, capsys):
    model, _, gallery, _ = setup
    folder = make_gallery(tmp_path / "g", people=2, per_person=2, seed=5)
    (folder / "person00" / "broken.jpg").write_text("this is not a picture")
    assert main(["faces", "index", "build", str(folder), "--model", str(model), "--out", str(tmp_path / "idx"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "broken.jpg" in out and "4 added" in out and "1 unreadable" in out
    assert GalleryIndex.open(tmp_path / "idx").count == 4


def test_search_command_new_and_old_forms(setup, tmp_path, capsys):
    model, _, gallery, _ = setup
    assert main(["faces", "index", "build", str(gallery), "--model", str(model), "--out", str(tmp_path / "idx"),
                 "--no-progress"]) == 0
    capsys.readouterr()
    queries = [gallery / "person02" / "1.png", gallery / "loose1.png"]
    assert main(["faces", "search", str(tmp_path / "idx"), *map(str, queries), "-k", "4", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert [r["query"] for r in answer["results"]] == [str(q) for q in queries]
    assert [r["matches"][0]["name"] for r in answer["results"]] == ["person02/1.png", "loose1.png"]
    assert all(len(r["matches"]) == 4 for r in answer["results"])
    # The first form: a model and a folder embedded for this one search, same table as before.
    assert main(["faces", "search", str(model), "--gallery", str(gallery), "--query", str(queries[0]), "-k", "2"]) == 0
    captured = capsys.readouterr()
    assert "embed gallery" in captured.err  # the folder is embedded now: progress is shown (stderr)
    lines = captured.out.strip().splitlines()
    rows = [line.split() for line in lines[lines.index(next(line for line in lines if line.startswith("rank"))) + 1:]]
    assert len(rows) == 2 and rows[0][3] == "person02/1.png" and float(rows[0][1]) < 1e-3
    assert main(["faces", "search", str(model), str(queries[0])]) == 2  # a model without --gallery
    assert "add --gallery DIR" in capsys.readouterr().err
    # More than the gallery holds: the whole gallery, ranked, and a line saying so.
    assert main(["faces", "search", str(tmp_path / "idx"), str(queries[0]), "-k", "99", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"][0]["matches"]) == 14
    assert main(["faces", "search", str(tmp_path / "idx"), str(queries[0]), "-k", "99"]) == 0
    out = capsys.readouterr().out
    assert "the gallery holds 14 images: all of them, ranked" in out and out.count("\n") == 14 + 4
    # A folder that is neither an index nor a model is not called a model.
    (tmp_path / "photos").mkdir()
    assert main(["faces", "search", str(tmp_path / "photos"), str(queries[0])]) == 2
    err = capsys.readouterr().err
    assert "is not a face index (a folder without index.json" in err and "it is a model" not in err


def test_faiss_backend_returns_the_exact_top_k(tmp_path):
    if not faiss_available():
        pytest.skip("faiss-cpu is not installed (pip install 'cnnlab[faiss]')")
    rng = np.random.default_rng(0)
    gallery = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(3000, 32)).astype(np.float32)), dim=1)
    queries = gallery[:40] + 0.05 * torch.from_numpy(rng.normal(size=(40, 32)).astype(np.float32))
    for distance in ("euclidean", "cosine"):
        d_exact, i_exact = nearest_neighbours(queries, gallery, 10, distance, backend="torch")
        d_faiss, i_faiss = nearest_neighbours(queries, gallery, 10, distance, backend="faiss")
        assert torch.equal(i_exact, i_faiss)
        torch.testing.assert_close(d_exact, d_faiss, atol=1e-4, rtol=0)
    # A gallery index loads its embeddings into FAISS once and answers as the exact search does.
    files = [GalleryFile(tmp_path / f"{n}.png", f"{n}.png", None, 1, 1) for n in range(len(gallery))]
    index = GalleryIndex(tmp_path, {"distance": "euclidean"}, index_module._rows(gallery.numpy(), files))
    d_index, i_index = index.nearest(queries.numpy(), 10, backend="faiss")
    first = index._faiss
    assert isinstance(first, retrieval.FaissGallery) and np.array_equal(i_index, i_exact.numpy())
    index.nearest(queries.numpy()[:1], 3, backend="faiss")
    assert index._faiss is first
    np.testing.assert_array_equal(index.nearest(queries.numpy(), 10, backend="torch")[1], i_index)


def test_auto_backend_uses_faiss_only_for_large_galleries(monkeypatch):
    built = []

    class Recorder:
        def __init__(self, gallery, distance):
            built.append(len(gallery))

        def search(self, queries, k):
            return "faiss"

    monkeypatch.setattr(retrieval, "faiss_available", lambda: True)
    monkeypatch.setattr(retrieval, "FaissGallery", Recorder)
    monkeypatch.setattr(retrieval, "FAISS_MIN_ROWS", 100)
    small, large = torch.randn(99, 8), torch.randn(100, 8)
    assert nearest_neighbours(small[:2], small, 3, backend="auto")[0].shape == (2, 3)
    assert nearest_neighbours(large[:2], large, 3, backend="auto") == "faiss"
    assert nearest_neighbours(large[:2], large, 3, backend="auto", query_rows=np.array([0, 1]))[0].shape == (2, 3)
    assert nearest_neighbours(large[:2], large, 3, "cosine", backend="torch")[0].shape == (2, 3)
    assert built == [100]
    assert retrieval.choose_backend("auto", 10**6, "euclidean", leave_one_out=True) == "torch"
    monkeypatch.setattr(retrieval, "faiss_available", lambda: False)
    assert retrieval.choose_backend("auto", 10**6, "euclidean") == "torch"  # not installed: exact torch
    with pytest.raises(ValueError, match="backend"):
        nearest_neighbours(small, small, 1, backend="annoy")


def test_person_names_the_images_directly_in_the_folder(setup, verifier, tmp_path, capsys):
    _, _, gallery, _ = setup
    build_index(verifier, gallery / "person00", tmp_path / "idx", person="Ada", progress=False)
    assert GalleryIndex.open(tmp_path / "idx").people == ["Ada"] * 3
    assert main(["faces", "index", "add", str(tmp_path / "idx"), str(gallery / "person01"), "--person", "Bo",
                 "--no-progress"]) == 0
    assert "3 added" in capsys.readouterr().out
    people = GalleryIndex.open(tmp_path / "idx").people
    assert people.count("Bo") == 3 and people.count("Ada") == 3


def test_one_search_checks_the_index_model_once_and_before_embedding(setup, verifier, tmp_path, monkeypatch, capsys):
    model, _, gallery, _ = setup
    build_index(verifier, gallery, tmp_path / "idx", progress=False)
    events = []
    real_check, real_embed = GalleryIndex.check_model, FaceVerifier.embed
    monkeypatch.setattr(GalleryIndex, "check_model", lambda self, v: (events.append("check"), real_check(self, v))[1])
    monkeypatch.setattr(FaceVerifier, "embed",
                        lambda self, images: (events.append("embed"), real_embed(self, images))[1])
    assert main(["faces", "search", str(tmp_path / "idx"),
                 str(gallery / "loose0.png"), str(gallery / "loose1.png")]) == 0
    assert events == ["check", "embed"]


def test_k_is_checked_in_one_place():
    from cnnlab.metrics.retrieval import BadK, check_k
    assert check_k(3, 3) == 3
    with pytest.raises(BadK, match=r"^k must be in 1..5 \(images in the index\), got 6$"):
        check_k(6, 5, "images in the index")
    assert issubclass(BadK, CnnlabError) and issubclass(BadK, ValueError)
