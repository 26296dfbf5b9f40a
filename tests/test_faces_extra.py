"""Training beside LFW's people and validating on people that are not LFW's
(`cnnlab.tasks.faces.extra`), on a fake LFW tree and a fake CelebA layout: extra people join
the training side only (never LFW's validation or test people), extra_val's held-out people are
never trained on and are the same with or without extra training data, and metrics.json records
what the run trained on and the second validation set."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cnnlab.cli import main
from cnnlab.core.config import build_config
from cnnlab.core.errors import CnnlabError
from cnnlab.data.lfw import LFWProtocol
from cnnlab.tasks.faces import FaceTrainConfig, train_view1, train_view2, untrained_baseline
from cnnlab.tasks.faces.compare import compare_runs
from face_models import make_gallery
from test_faces_cli import TINY
from test_faces_train import make_fake_lfw, quiet, tiny_config
from test_identities import CROP, make_fake_celeba


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("extra")
    # 12 CelebA people with 3 images and 2 with one: 38 images.
    return make_fake_lfw(root / "lfw"), make_fake_celeba(root / "celeba", people=12, per_person=3, singles=2)


@pytest.fixture
def seen(monkeypatch):
    """The people of every task built: which trained, which validated (LFW's, extra_val's)."""
    from cnnlab.tasks.faces import training
    runs = []

    class Recording(training.FaceVerificationTask):
        def __init__(self, config, dataset, fit_rows, val_rows, device, **kw):
            super().__init__(config, dataset, fit_rows, val_rows, device, **kw)
            people = np.array(dataset.people)
            extra = kw.get("extra_val_rows")
            runs.append({"fit": set(people[dataset.labels[fit_rows]]), "val": set(people[dataset.labels[val_rows]]),
                         "extra_val": set() if extra is None else set(people[dataset.labels[extra]])})

    monkeypatch.setattr(training, "FaceVerificationTask", Recording)
    return runs


def test_extra_people_train_only_and_held_out_people_validate_only(data, seen, tmp_path):
    lfw, celeba = data
    source = f"celeba:{celeba}"
    with_extra = train_view1(tiny_config(epochs=2, extra_train=[source], extra_val=source, extra_val_people=4,
                                         select_on="both"), lfw, tmp_path / "extra", evaluate_test=True, log=quiet)
    # The baseline of a comparison: LFW's training people only, validated on the same CelebA people.
    baseline = train_view1(tiny_config(epochs=1, extra_val=source, extra_val_people=4), lfw, tmp_path / "lfw",
                           evaluate_test=True, log=quiet)
    run, base = seen
    held_out = with_extra["extra_validation"]  # 4 people x 3 images, each a query
    kept = held_out["per_epoch"][with_extra["best_epoch"] - 1]
    assert held_out["retrieval"]["queries"] == 12 and kept["precision_at_1"] == held_out["retrieval"]["precision_at_1"]
    lfw_people = set(LFWProtocol(lfw).view1_train_people) | set(LFWProtocol(lfw).view1_test_people)
    test_people = set(LFWProtocol(lfw).view1_test_people)
    extra_fit = {p for p in run["fit"] if p.startswith("celeba/")}
    assert len(extra_fit) == 10 and run["fit"] - extra_fit <= lfw_people
    assert len(run["extra_val"]) == 4 and all(p.startswith("celeba/") for p in run["extra_val"])
    assert not run["fit"] & run["extra_val"]                  # held-out CelebA people never train
    assert not run["fit"] & test_people and not run["val"] & test_people
    assert run["val"] <= lfw_people and run["val"] == base["val"]   # LFW's validation split does not move
    assert base["extra_val"] == run["extra_val"] and not any("/" in p for p in base["fit"])
    assert with_extra["test"]["n_pairs"] == baseline["test"]["n_pairs"] == 16
    assert with_extra["test_images"] == baseline["test_images"]     # only LFW's test people are embedded

    sources = with_extra["training_data"]["sources"]
    assert [s["kind"] for s in sources] == ["lfw", "celeba"]
    assert (sources[1]["people"], sources[1]["images"], sources[1]["held_out_people"]) == (10, 26, 4)
    assert sources[0]["people"] == len(run["fit"] - extra_fit)
    assert with_extra["training_data"]["images"] == with_extra["fit_images"] == sources[0]["images"] + 26
    assert [s["kind"] for s in baseline["training_data"]["sources"]] == ["lfw"]

    extra = with_extra["extra_validation"]
    assert (extra["people"], extra["images"], extra["kind"]) == (4, 12, "celeba")
    assert 0 <= extra["auc"] <= 1 and extra["best_threshold_accuracy"] >= extra["accuracy"]
    assert extra["threshold"] == pytest.approx(with_extra["threshold"])  # LFW's: extra_val chooses nothing
    assert [e["epoch"] for e in extra["per_epoch"]] == [1, 2]
    history = [json.loads(line) for line in (tmp_path / "extra" / "metrics.jsonl").read_text().splitlines()]
    best = history[with_extra["best_epoch"] - 1]
    assert with_extra["selected_on"] == "both"
    assert with_extra["selection_auc"] == pytest.approx(best["val_mean_auc"])
    assert best["val_mean_auc"] == pytest.approx((best["val_auc"] + best["val_extra_auc"]) / 2)
    assert max(h["val_mean_auc"] for h in history) == pytest.approx(best["val_mean_auc"])
    assert baseline["selected_on"] == "lfw" and baseline["selection_auc"] == baseline["validation"]["auc"]

    # Both runs keep the held-out people's pairs beside LFW's, the same pairs: `faces compare` pairs them.
    compared = compare_runs(tmp_path / "lfw", tmp_path / "extra", resamples=20)["sets"]
    assert compared["extra_val"]["auc_b"] == pytest.approx(extra["auc"]) and compared["extra_val"]["people"] == 4
    assert compared["val"]["auc_b"] == pytest.approx(with_extra["validation"]["auc"])


def test_people_named_as_lfw_people_are_left_out(data, seen, tmp_path):
    lfw, _ = data
    gallery = make_gallery(tmp_path / "gallery", people=5, per_person=3)
    (gallery / "person00").rename(gallery / "P20")   # an LFW DevTest person's name
    metrics = train_view1(tiny_config(epochs=1, extra_train=[str(gallery)]), lfw, tmp_path / "run",
                          evaluate_test=False, log=quiet)
    source = metrics["training_data"]["sources"][1]
    assert (source["kind"], source["people"], source["named_as_lfw_people"]) == ("folders", 4, 1)
    assert "gallery/P20" not in seen[0]["fit"] and "gallery/person01" in seen[0]["fit"]


def test_view2_folds_train_on_extra_people_and_validate_on_the_held_out_ones(data, seen, tmp_path):
    lfw, celeba = data
    config = tiny_config(epochs=1, extra_train=[str(celeba)], extra_val=str(celeba), extra_val_people=4)
    summary = train_view2(config, lfw, tmp_path / "v2", folds=[0], log=quiet)
    fold_people = set(LFWProtocol(lfw).view2_people[0])
    assert not seen[0]["fit"] & fold_people and not seen[0]["val"] & fold_people
    assert not seen[0]["fit"] & seen[0]["extra_val"] and len(seen[0]["extra_val"]) == 4
    assert summary["extra_train"][0]["people"] == 10 and summary["extra_validation"]["people"] == 4
    assert 0 <= summary["folds"][0]["extra_val_auc"] <= 1 and "extra_val_auc" in summary


def test_config_rules_for_the_extra_fields():
    config = build_config(FaceTrainConfig, {"extra_train": "celeba:/x", "extra_val": "/x", "select_on": "both"})
    assert config.extra_train == ["celeba:/x"] and config.train_config().select_metric == "mean_auc"
    assert FaceTrainConfig().train_config().select_metric == "auc"
    for bad, message in (({"select_on": "both"}, "needs extra_val"), ({"select_on": "best"}, "select_on"),
                         ({"extra_train": ["/x", "folders:/x"]}, "twice"), ({"extra_val_people": 1}, ">= 2"),
                         ({"extra_train": [3]}, "list of sources"), ({"extra_train": ["celeba:"]}, "no folder")):
        with pytest.raises(CnnlabError, match=message):
            build_config(FaceTrainConfig, bad)


def test_hold_out_is_seeded_and_refuses_more_people_than_there_are(data):
    from cnnlab.data.identities import load_source
    from cnnlab.tasks.faces.extra import hold_out_people
    dataset = load_source(str(data[1]), CROP).dataset
    first = hold_out_people(dataset, 5, 0, "celeba")
    assert first == hold_out_people(dataset, 5, 0, "celeba") != hold_out_people(dataset, 5, 1, "celeba")
    assert all(c == 3 for c in dataset.subset(first).images_per_person())  # people with 2+ images only
    with pytest.raises(CnnlabError, match="has 12 people with two or more"):
        hold_out_people(dataset, 13, 0, "celeba")


def test_cli_flags_train_on_extra_data_and_score_a_folder(data, tmp_path, capsys):
    lfw, celeba = data
    more, att = make_gallery(tmp_path / "more", people=3, seed=5), make_gallery(tmp_path / "att", people=4)
    out = tmp_path / "run"
    assert main(["faces", "train", "--data", str(lfw), "--out", str(out), "--no-test", "--epochs", "1", *TINY,
                 "--extra-train", f"celeba:{celeba}", "--extra-train", f"folders:{more}",
                 "--extra-val", str(celeba), "--extra-val-people", "4", "--score-folder", str(att)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [s["kind"] for s in metrics["training_data"]["sources"]] == ["lfw", "celeba", "folders"]
    assert metrics["extra_validation"]["people"] == 4
    scored = metrics["scored_folders"][0]
    assert scored["people"] == 4 and scored["at_model_threshold"]["threshold"] == pytest.approx(metrics["threshold"])
    assert "never trained on, no calibration" in capsys.readouterr().out
    for argv, message in ((["--extra-train", f"celeba:{tmp_path / 'none'}"], "not found"),
                          (["--score-folder", str(tmp_path / "none")], "--score-folder"),
                          (["--select-on", "both"], "needs extra_val")):
        assert main(["faces", "train", "--data", str(lfw), "--out", str(tmp_path / "bad"), "--no-test", *TINY,
                     *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


def test_untrained_baseline_scores_the_held_out_people_a_trained_run_validates_on(data, tmp_path):
    lfw, celeba = data
    source = f"celeba:{celeba}"
    base = untrained_baseline(tiny_config(extra_val=source, extra_val_people=4), lfw, tmp_path / "base", log=quiet)
    run = train_view1(tiny_config(epochs=1, extra_val=source, extra_val_people=4), lfw, tmp_path / "run",
                      evaluate_test=False, log=quiet)
    b, t = base["extra_validation"], run["extra_validation"]
    assert (b["people"], b["images"], b["pairs"], b["matched"]) == (t["people"], t["images"], t["pairs"], t["matched"])
    assert b["people"] == 4 and b["images"] == 12 and 0 <= b["auc"] <= 1
    # Retrieval over the same images as a trained run's: both validation sets, every image a query.
    assert b["retrieval"]["queries"] == t["retrieval"]["queries"] == 12
    assert base["validation_retrieval"]["queries"] == run["validation_retrieval"]["queries"] > 0
    assert b["threshold"] == base["validation"]["threshold"]  # LFW's: the second set chooses nothing
    assert json.loads((tmp_path / "base" / "baseline.json").read_text())["extra_validation"]["auc"] == b["auc"]
    assert "extra_validation" not in untrained_baseline(tiny_config(), lfw, log=quiet)
    with pytest.raises(CnnlabError, match="trains nothing"):
        untrained_baseline(tiny_config(extra_train=[source]), lfw, log=quiet)


# ---------------------------------------------------------------------------- the default preset
NO_PRESET = [flag for flag in TINY if flag not in ("--preset", "lfw")]  # the default: cpu


def test_data_root_in_a_source_is_the_folder_cnnlab_data_names(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path))
    config = FaceTrainConfig(extra_train=["celeba:{data}/celeba", "{data}/mine"], extra_val="folders:{data}/att")
    assert config.extra_train == [f"celeba:{tmp_path}/celeba", f"{tmp_path}/mine"]
    assert config.extra_val == f"folders:{tmp_path}/att"
    assert FaceTrainConfig().extra_train == [] and FaceTrainConfig().extra_val == ""  # the lfw preset's


def test_the_default_preset_trains_on_the_data_roots_celeba_and_holds_500_people_out(data, tmp_path, monkeypatch):
    lfw, celeba = data
    monkeypatch.setenv("CNNLAB_DATA", str(lfw.parent))
    out = tmp_path / "run"
    assert main(["faces", "train", "--out", str(out), "--no-test", "--epochs", "1", *NO_PRESET,
                 "--extra-val-people", "4"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    sources = metrics["training_data"]["sources"]
    assert [s["kind"] for s in sources] == ["lfw", "celeba"] and sources[1]["root"] == str(celeba)
    assert metrics["extra_validation"]["people"] == 4
    recipe = (out / "faces_config.yaml").read_text()
    assert f"celeba:{celeba}" in recipe and "{data}" not in recipe  # the folders the run read


def test_the_default_preset_without_celeba_is_one_line_naming_the_way_round(data, tmp_path, monkeypatch, capsys):
    lfw, _ = data
    empty = tmp_path / "data"
    (empty / "lfw").mkdir(parents=True)
    monkeypatch.setenv("CNNLAB_DATA", str(empty))
    for command in ("train", "tune", "margins"):
        assert main(["faces", command, "--data", str(lfw), "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(empty / "celeba") in err and "--preset lfw" in err, err
        assert not (tmp_path / "run").exists()
    # Only the people a preset brings are checked: the user's own sources replace them.
    mine = make_gallery(tmp_path / "mine", people=3, seed=5)
    assert main(["faces", "train", "--data", str(lfw), "--out", str(tmp_path / "mine-run"), "--no-test",
                 "--epochs", "1", *NO_PRESET, "--extra-train", str(mine), "--extra-val", ""]) == 0


def test_baseline_under_the_default_preset_scores_the_held_out_people_and_trains_nothing(data, tmp_path, monkeypatch,
                                                                                           capsys):
    lfw, celeba = data
    monkeypatch.setenv("CNNLAB_DATA", str(lfw.parent))
    assert main(["faces", "baseline", "--data", str(lfw), "--out", str(tmp_path / "base"), *NO_PRESET,
                 "--extra-val-people", "4"]) == 0
    assert json.loads((tmp_path / "base" / "baseline.json").read_text())["extra_validation"]["people"] == 4
    capsys.readouterr()
    assert main(["faces", "baseline", "--data", str(lfw), *NO_PRESET, "--extra-train", str(celeba)]) == 2
    assert "trains nothing" in capsys.readouterr().err
