"""Scoring a model on an identity folder it never trained on (`score_identity_folder`,
`cnnlab faces score`): every same-person pair and as many seeded different-person pairs, the
accuracy at the model's own threshold, bad files skipped and listed, user errors as one line."""
from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest

from cnnlab.cli import main
from cnnlab.core.errors import CnnlabError
from cnnlab.metrics.verification import best_threshold, evaluate
from cnnlab.verifier import FaceVerifier, score_identity_folder
from cnnlab.verifier.folder import _pairs
from face_models import build_tiny_model, make_gallery


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    model = build_tiny_model(root / "model.pt", seed=0, threshold=0.5)
    folder = make_gallery(root / "people", people=3, per_person=3, seed=3)
    return model, folder


@pytest.fixture(scope="module")
def verifier(setup):
    return FaceVerifier.load(setup[0], device="cpu", runtime="torch")


def test_pair_counts_and_headline_numbers(setup, verifier):
    _, folder = setup
    result = score_identity_folder(verifier, folder, progress=False)
    assert (result["images"], result["people"], result["skipped"]) == (9, 3, [])
    assert result["pairs"]["matched"] == 9            # 3 people x C(3, 2)
    assert result["pairs"]["mismatched"] == 9         # as many as matched
    assert result["pairs"]["mismatched_available"] == 27
    at = result["at_model_threshold"]
    assert at["threshold"] == verifier.threshold == 0.5 and at["threshold_source"] == "calibrated"
    assert at["n_pairs"] == 18 and 0.0 <= at["accuracy"] <= 1.0
    assert result["auc"] == at["auc"] and result["eer"] == at["eer"] and result["tar_at_far"] == at["tar_at_far"]
    assert result["best_threshold_accuracy"] >= at["accuracy"]  # the peeking one is an upper bound
    assert "peek" in result["best_threshold_note"]
    json.dumps(result)  # plain JSON throughout


def test_every_pair_and_the_accuracy_recomputed_from_verifier_distance(setup, verifier):
    """With every different-person pair asked for, the pairs are known exactly: the scorer's
    metrics must equal `evaluate` on `verifier.distance` of those pairs, one by one."""
    _, folder = setup
    files = sorted(folder.glob("*/*.png"))
    z = dict(zip(files, verifier.embed(files)))
    same_pairs = [(a, b) for a, b in itertools.combinations(files, 2) if a.parent == b.parent]
    diff_pairs = [(a, b) for a, b in itertools.combinations(files, 2) if a.parent != b.parent]
    assert len(same_pairs) == 9 and len(diff_pairs) == 27
    pairs = same_pairs + diff_pairs
    d = np.array([verifier.distance(z[a], z[b]) for a, b in pairs])
    same = np.r_[np.ones(9, bool), np.zeros(27, bool)]
    expected = evaluate(d, same, threshold=verifier.threshold).to_dict()

    # more negatives than exist: all of them, never a repeat
    result = score_identity_folder(verifier, folder, negatives=1000, progress=False)
    assert (result["pairs"]["matched"], result["pairs"]["mismatched"]) == (9, 27)
    got = result["at_model_threshold"]
    assert got["accuracy"] == pytest.approx(expected["accuracy"])
    assert got["auc"] == pytest.approx(expected["auc"]) and got["eer"] == pytest.approx(expected["eer"])
    assert best_threshold(d, same)[1] == pytest.approx(result["best_threshold_accuracy"])


def test_the_seed_fixes_the_negatives(setup, verifier):
    _, folder = setup
    one = score_identity_folder(verifier, folder, negatives=5, seed=7, progress=False)
    two = score_identity_folder(verifier, folder, negatives=5, seed=7, batch_size=2, progress=False)
    assert one["pairs"]["mismatched"] == 5
    for key in ("auc", "eer", "best_threshold", "best_threshold_accuracy"):
        assert one[key] == pytest.approx(two[key])
    assert one["at_model_threshold"]["accuracy"] == two["at_model_threshold"]["accuracy"]
    # which pairs a seed draws (checked on the sampler itself: no embedding needed)
    people = ["a"] * 4 + ["b"] * 3 + ["c"] * 5
    first, second, same, available = _pairs(people, 6, 7)
    assert available == 4 * 3 + 4 * 5 + 3 * 5 and int(same.sum()) == 6 + 3 + 10 and int((~same).sum()) == 6
    assert all(people[i] != people[j] and i < j for i, j in zip(first[~same], second[~same]))
    assert len({(i, j) for i, j in zip(first[~same], second[~same])}) == 6          # without replacement
    again = _pairs(people, 6, 7)
    assert np.array_equal(first, again[0]) and np.array_equal(second, again[1])
    other = _pairs(people, 6, 8)
    assert not (np.array_equal(first, other[0]) and np.array_equal(second, other[1]))


def test_a_corrupt_file_is_skipped_listed_and_the_run_goes_on(setup, verifier, tmp_path):
    _, folder = setup
    copy = shutil.copytree(folder, tmp_path / "people")
    bad = copy / "person01" / "9.png"
    bad.write_bytes(b"not an image")
    (copy / "README.txt").write_text("ignored: not an image")
    result = score_identity_folder(verifier, copy, progress=False)
    assert result["images"] == 9 and result["people"] == 3
    # Every file is accounted for: the damaged image as unreadable, the text file as not an image.
    assert [(s["path"], s["kind"]) for s in result["skipped"]] == [(str(copy / "README.txt"), "not_image"),
                                                                   (str(bad), "unreadable")]
    assert all(s["reason"] for s in result["skipped"])
    assert result["files"]["seen"] == 11 and result["files"]["used"] == 9
    assert result["pairs"]["matched"] == 9


def test_user_errors_are_one_line(setup, verifier, tmp_path):
    _, folder = setup
    with pytest.raises(CnnlabError, match="identity folder not found") as missing:
        score_identity_folder(verifier, tmp_path / "nope")
    one = tmp_path / "one"
    shutil.copytree(folder / "person00", one / "person00")
    with pytest.raises(CnnlabError, match="at least 2") as single:
        score_identity_folder(verifier, one)
    lonely = make_gallery(tmp_path / "lonely", people=3, per_person=1, seed=4)
    with pytest.raises(CnnlabError, match="no same-person pair") as no_pair:
        score_identity_folder(verifier, lonely, progress=False)
    for err in (missing, single, no_pair):
        assert "\n" not in str(err.value)


def test_cli_json_out_and_summary(setup, tmp_path, capsys):
    model, folder = setup
    out = tmp_path / "sub" / "score.json"
    assert main(["faces", "score", str(folder), "--model", str(model), "--device", "cpu", "--runtime", "torch",
                 "--negatives", "4", "--seed", "1", "--json", "--out", str(out), "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["pairs"]["matched"] == 9 and printed["pairs"]["mismatched"] == 4
    assert printed["at_model_threshold"]["threshold"] == 0.5

    assert main(["faces", "score", str(folder), "--model", str(model), "--device", "cpu", "--runtime", "torch",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "AUC" in text and "model's threshold 0.5000" in text and "peeks" in text
    assert "9 same-person + 9 different-person pairs" in text and "0 skipped" in text


def test_cli_missing_folder_exits_non_zero_with_one_line(setup, tmp_path, capsys):
    model, _ = setup
    assert main(["faces", "score", str(tmp_path / "missing"), "--model", str(model), "--device", "cpu",
                 "--runtime", "torch"]) == 2
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("cnnlab: error: ") and "not found" in errors[0]
    assert captured.out == ""
