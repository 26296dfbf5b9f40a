"""`faces calibrate`: a threshold chosen on the user's own people (false-accept target or best
accuracy), written into a new model file with its provenance; the embeddings, and so every
gallery index, stay valid. `faces score --calibrate-people N` estimates what it buys."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cnnlab.cli import main
from cnnlab.core.errors import CnnlabError
from cnnlab.metrics.verification import threshold_at_far
from cnnlab.verifier import FaceVerifier, build_index
from cnnlab.verifier.folder import people_for_far, split_people
from face_models import build_tiny_model, make_gallery

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#              pos   pos   neg   pos   neg   neg   neg
DISTANCES = [0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70]
SAME = [True, True, False, True, False, False, False]


def test_threshold_at_far_by_hand():
    # 4 different-person pairs, target 0.25: one may be accepted (0.30), the next (0.50) may not;
    # halfway between the last accepted distance (0.40) and 0.50.
    t, far, limited = threshold_at_far(DISTANCES, SAME, 0.25)
    assert t == pytest.approx(0.45) and far == 0.25 and not limited
    # 0.1 < 1/4: these pairs cannot show it; no different-person pair is accepted.
    t, far, limited = threshold_at_far(DISTANCES, SAME, 0.1)
    assert t == pytest.approx(0.25) and far == 0.0 and limited
    t, far, _ = threshold_at_far(DISTANCES, SAME, 0.99)  # 3 of 4 may pass: 0.70 is rejected
    assert t == pytest.approx(0.65) and far == 0.75
    with pytest.raises(CnnlabError, match="FAR target must be in"):
        threshold_at_far(DISTANCES, SAME, 1.0)


def test_split_people_is_seeded_and_people_disjoint():
    people = [f"p{i // 3}" for i in range(30)]  # 10 people, 3 images each
    a, b = split_people(people, 4, seed=0)
    inside, outside = {people[r] for r in a}, {people[r] for r in b}
    assert len(inside) == 4 and len(outside) == 6 and not inside & outside and len(a) + len(b) == 30
    again = split_people(people, 4, seed=0)
    assert np.array_equal(again[0], a) and not np.array_equal(split_people(people, 4, seed=1)[0], a)
    with pytest.raises(CnnlabError, match="at least 2 people on each side"):
        split_people(people, 9, seed=0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    model = build_tiny_model(root / "model.pt", threshold=0.5)
    folder = make_gallery(root / "people", people=8, per_person=3, seed=3)
    return model, folder, root


@pytest.mark.parametrize("objective", ["far", "accuracy"])
def test_calibrate_writes_a_new_model_with_the_threshold_and_where_it_came_from(setup, tmp_path, capsys, objective):
    model, folder, _ = setup
    out = tmp_path / "calibrated.pt"
    before = model.read_bytes()
    assert main(["faces", "calibrate", str(model), str(folder), "--out", str(out), "--objective", objective,
                 "--far", "0.02", "--no-progress", "--runtime", "torch"]) == 0
    printed = capsys.readouterr().out
    assert model.read_bytes() == before  # the original is never changed
    extra = torch.load(out, weights_only=True)["extra"]
    c = extra["calibration"]
    assert c["objective"] == objective and c["replaced"] == 0.5 and c["people"] == 8 and c["images"] == 24
    assert c["pairs"]["matched"] == 8 * 3 and c["pairs"]["mismatched"] == 24 and len(c["folder_fingerprint"]) == 16
    assert extra["threshold"] != 0.5 and f"threshold {extra['threshold']:.4f}" in printed
    # The rates it reports are the rates of that threshold on those pairs.
    calibrated = FaceVerifier.load(out, device="cpu", runtime="torch")
    z = calibrated.embed(sorted(folder.glob("*/*.png")))
    same_d = [calibrated._pair(z[3 * p + i], z[3 * p + j]) for p in range(8) for i, j in ((0, 1), (0, 2), (1, 2))]
    assert c["tar"] == pytest.approx(np.mean(np.array(same_d) <= extra["threshold"]))
    if objective == "far":
        assert c["far"] == 0 and c["far_target"] == 0.02
        assert c["far_limited"] is True and "cannot show a false-accept rate of 0.02" in c["note"]  # 24 pairs < 1/0.02
        # 0.02 x 28 pairs of people < 2: the rate will not carry over to other people.
        assert c["people_pairs"] == 28 and "read from 8 people (28 pairs of people)" in c["note"]
        assert "about 15 people pin it" in c["note"] and "note: " in printed
    else:
        assert "note" not in c  # the accuracy objective reads no tail
    assert calibrated.fingerprint == FaceVerifier.load(model, device="cpu", runtime="torch").fingerprint
    assert ("calibrated on" in calibrated.threshold_source
            and calibrated.describe()["calibration"]["objective"] == objective)


def test_a_rate_the_people_can_pin_gets_no_caution(setup, tmp_path):
    model, folder, _ = setup
    out = tmp_path / "calibrated.pt"
    assert main(["faces", "calibrate", str(model), str(folder), "--out", str(out), "--far", "0.5",
                 "--no-progress", "--runtime", "torch"]) == 0  # 0.5 x 28 pairs of people >= 2, 12 of 24 pairs
    c = torch.load(out, weights_only=True)["extra"]["calibration"]
    assert c["far_limited"] is False and "note" not in c and c["far"] <= 0.5
    assert people_for_far(0.5) == 4 and people_for_far(1e-2) == 21 and people_for_far(1e-3) == 64


def test_an_index_built_with_the_original_stays_valid_and_verify_names_the_calibration(setup, tmp_path, capsys):
    model, folder, _ = setup
    out = tmp_path / "calibrated.pt"
    assert main(["faces", "calibrate", str(model), str(folder), "--out", str(out), "--objective", "accuracy",
                 "--no-progress"]) == 0
    build_index(FaceVerifier.load(model, device="cpu"), folder, tmp_path / "idx", progress=False)
    capsys.readouterr()
    query = folder / "person02" / "1.png"
    assert main(["faces", "search", str(tmp_path / "idx"), str(query), "--model", str(out), "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    threshold = torch.load(out, weights_only=True)["extra"]["threshold"]
    assert lines[0].startswith(f"threshold {threshold:.4f}") and lines[1].startswith("threshold: calibrated on")
    assert main(["faces", "verify", str(out), str(query), str(folder / "person02" / "0.png")]) == 0
    assert "threshold: calibrated on" in capsys.readouterr().out
    assert main(["faces", "verify", str(model), str(query), str(folder / "person02" / "0.png")]) == 0
    assert "threshold: the model's own" in capsys.readouterr().out
    assert main(["faces", "calibrate", str(model), str(folder), "--out", str(model)]) == 2
    assert "write the calibrated model to a new file" in capsys.readouterr().err


def test_score_with_calibrate_people_scores_only_the_others(setup, tmp_path, capsys):
    model, folder, _ = setup
    assert main(["faces", "score", str(folder), "--model", str(model), "--calibrate-people", "3", "--objective",
                 "accuracy", "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["calibration"]["people"] == 3 and result["people"] == 5 and result["images"] == 15
    assert result["pairs"]["matched"] == 5 * 3  # only the 5 scored people's pairs
    at = result["at_calibrated_threshold"]
    assert at["threshold"] == result["calibration"]["threshold"] and 0 <= at["accuracy"] <= 1
    assert "people-disjoint" in at["note"]
    assert main(["faces", "score", str(folder), "--model", str(model), "--calibrate-people", "3",
                 "--no-progress"]) == 0
    assert "calibrated on 3 other people (far)" in capsys.readouterr().out
    assert main(["faces", "score", str(folder), "--model", str(model), "--calibrate-people", "7"]) == 2
    assert "at least 2 people on each side" in capsys.readouterr().err


def test_healthz_says_which_calibration_is_in_force(setup, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from cnnlab.serve import create_app
    model, folder, _ = setup
    out = tmp_path / "calibrated.pt"
    assert main(["faces", "calibrate", str(model), str(folder), "--out", str(out), "--no-progress"]) == 0
    with TestClient(create_app(FaceVerifier.load(out, device="cpu"))) as client:
        health = client.get("/healthz").json()
    assert health["model"]["threshold_source"].startswith("calibrated on") and \
        health["model"]["calibration"]["objective"] == "far"
