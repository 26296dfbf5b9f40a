"""`cnnlab faces ...` end to end on a fake LFW tree: train writes a model that verify, search
and export then use; user errors are one line and exit 2."""
from __future__ import annotations

import json

import pytest

from cnnlab.cli import main
from test_faces_train import SIDE, make_fake_lfw

# LFW alone: the default preset also trains on the data root's CelebA.
TINY = ["--preset", "lfw", "--weights", "none", "--input-size", "32", "--crop", str(SIDE), "--embedding-dim", "16",
        "--batch-size", "16", "--k", "2", "--val-fraction", "0.25", "--val-pairs", "20",
        "--trainable-stages", "3", "--device", "cpu", "--no-progress", "--lr", "0.003",
        "--no-align", "--miner", "random", "--no-flip-tta"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = make_fake_lfw(tmp_path_factory.mktemp("lfw"))
    out = tmp_path_factory.mktemp("runs") / "view1"
    config = out.parent / "recipe.yaml"
    config.write_text("epochs: 2\nmargin: 1.5\n")
    assert main(["faces", "train", "--data", str(root), "--out", str(out), "--config", str(config), *TINY]) == 0
    return root, out


def test_train_writes_the_run_and_config_file_values_are_used(trained, capsys):
    root, out = trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n_pairs"] == 16 and metrics["epochs"] == 2
    assert "margin: 1.5" in (out / "faces_config.yaml").read_text()
    assert (out / "roc.png").is_file() and (out / "environment.json").is_file()


def test_verify_prints_distance_threshold_and_decision(trained, capsys):
    root, out = trained
    images = root / "lfw-deepfunneled"
    assert main(["faces", "verify", str(out / "model.pt"), str(images / "P00" / "P00_0001.jpg"),
                 str(images / "P00" / "P00_0001.jpg")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("distance 0.00") and "same person" in line
    assert main(["faces", "verify", str(out / "model.pt"), str(images / "P00" / "P00_0001.jpg"),
                 str(images / "P01" / "P01_0002.jpg"), "--threshold", "0"]) == 0
    assert "different people" in capsys.readouterr().out


def test_search_ranks_the_query_itself_first(trained, capsys):
    root, out = trained
    images = root / "lfw-deepfunneled"
    query = images / "P03" / "P03_0002.jpg"
    assert main(["faces", "search", str(out / "model.pt"), "--gallery", str(images), "--query", str(query),
                 "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("threshold ") and "not an identity" in lines[0]
    assert lines[1].startswith("threshold: the model's own")  # which calibration is in force
    assert lines[2].split() == ["rank", "distance", "within", "image"]
    rows = [line.split() for line in lines[3:]]
    assert len(rows) == 3
    assert rows[0][3] == "P03/P03_0002.jpg" and float(rows[0][1]) < 1e-3


def test_export_writes_a_checked_onnx_file(trained, tmp_path, capsys):
    _, out = trained
    onnx_path = tmp_path / "face.onnx"
    assert main(["faces", "export", str(out / "model.pt"), str(onnx_path)]) == 0
    meta = json.loads(onnx_path.with_suffix(".json").read_text())
    assert meta["input_size"] == 32 and meta["threshold"] == pytest.approx(
        json.loads((out / "metrics.json").read_text())["threshold"])
    assert meta["max_abs_diff"] <= 1e-4


def test_user_errors_are_one_line_and_exit_2(trained, tmp_path, capsys):
    root, out = trained
    assert main(["faces", "verify", str(out / "model.pt"), str(tmp_path / "nope.jpg"), str(tmp_path / "x.jpg")]) == 2
    assert main(["faces", "train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), *TINY]) == 2
    assert main(["faces", "train", "--data", str(root), "--margin", "-1", *TINY]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    assert main(["faces", "train", "--data", str(root), "--config", str(bad), *TINY]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(e.startswith("cnnlab: error: ") for e in errors)
    assert "learning_rate" in errors[-1]


@pytest.mark.parametrize("command", ["train", "margins", "baseline", "tune"])
def test_every_recipe_flag_is_explained_in_help(command, capsys):
    """Each FaceTrainConfig field is a flag with a sentence of help, not only its default."""
    import dataclasses

    from cnnlab.tasks.faces import FaceTrainConfig
    fields = [f.name for f in dataclasses.fields(FaceTrainConfig)]
    # The help text is written once, on the field (`config.option`).
    assert [f.name for f in dataclasses.fields(FaceTrainConfig) if not f.metadata.get("help")] == []
    with pytest.raises(SystemExit):
        main(["faces", command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in fields:
        flag = "--" + name.replace("_", "-")
        assert flag in text, flag
    assert "detect the face (MTCNN) and warp its 5 landmarks" in text
    assert "hard miner: nearest other-person images per image (default 1)" in text


def test_the_phases_after_the_last_epoch_report_progress_in_a_log(tmp_path, capsys):
    """Issue 32, item 7: embedding DevTest and drawing the figures took minutes without a line.
    In a log (stderr not a terminal) each shows the plain progress line, as training does."""
    root = make_fake_lfw(tmp_path / "lfw")
    quiet_flag = TINY.index("--no-progress")
    flags = TINY[:quiet_flag] + TINY[quiet_flag + 1:]  # progress: auto, i.e. plain lines here
    assert main(["faces", "train", "--data", str(root), "--out", str(tmp_path / "run"), "--epochs", "1", *flags]) == 0
    captured = capsys.readouterr()
    assert "scoring the 16 DevTest pairs: embedding" in captured.out and "drawing the figures" in captured.out
    lines = captured.err.splitlines()
    assert any(line.startswith("embed DevTest: ") and "img (100%)" in line and "done in" in line for line in lines)
    assert any(line.startswith("figures: 4/4 figure (100%)") and "done in" in line for line in lines), lines
