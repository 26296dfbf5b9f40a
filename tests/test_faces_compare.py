"""`cnnlab faces compare A B`: every face run keeps its validation pairs (validation_pairs.npz),
two runs on the same pairs are compared pair by pair, and runs on different pairs are refused."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cnnlab.cli import main
from cnnlab.core.errors import CnnlabError
from cnnlab.metrics.verification import auc
from cnnlab.tasks.faces.compare import compare_runs
from test_faces_cli import TINY
from test_faces_train import make_fake_lfw


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = make_fake_lfw(tmp_path_factory.mktemp("lfw"))
    out = tmp_path_factory.mktemp("runs")
    for name, flags in (("a", ["--margin", "1.0"]), ("b", ["--margin", "2.0"]), ("seed1", ["--seed", "1"])):
        assert main(["faces", "train", "--data", str(root), "--out", str(out / name), "--no-test", "--epochs", "1",
                     *TINY, *flags]) == 0
    return out


def test_each_run_keeps_its_kept_epochs_validation_pairs(runs):
    metrics = json.loads((runs / "a" / "metrics.json").read_text())
    with np.load(runs / "a" / "validation_pairs.npz") as z:
        d, same, pa, pb = z["val_distances"], z["val_same"], z["val_person_a"], z["val_person_b"]
        images_a, images_b = z["val_image_a"], z["val_image_b"]
        assert {k for k in z.files if k.startswith("extra_val")} == set()     # no extra_val in this run
    assert len(d) == 40 and same.sum() == 20                                   # --val-pairs 20, of each kind
    assert auc(d, same) == pytest.approx(metrics["validation"]["auc"])
    assert np.all((pa == pb) == same)                  # a same-person pair is one person, an impostor two
    assert not any("/" in name for name in [*images_a, *images_b])   # file names: the data may move


def test_compare_prints_both_aucs_and_the_paired_interval(runs, capsys, tmp_path):
    out = tmp_path / "cmp.json"
    assert main(["faces", "compare", str(runs / "a"), str(runs / "b"), "--resamples", "300", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    result = json.loads(out.read_text())
    r = result["sets"]["val"]
    auc_a = json.loads((runs / "a" / "metrics.json").read_text())["validation"]["auc"]
    auc_b = json.loads((runs / "b" / "metrics.json").read_text())["validation"]["auc"]
    assert r["auc_a"] == pytest.approx(auc_a) and r["auc_b"] == pytest.approx(auc_b)
    assert r["difference"] == pytest.approx(auc_b - auc_a) and r["ci_low"] <= r["ci_high"]
    assert r["resamples"] <= 300 and r["pairs"] == 40
    assert f"{auc_a:.4f}" in text and f"{auc_b:.4f}" in text and "300 resamples of the people" in text
    # A run against itself: no difference, and B never beats A.
    itself = compare_runs(runs / "a", runs / "a", resamples=50)["sets"]["val"]
    assert itself["difference"] == 0 and itself["ci_low"] == itself["ci_high"] == 0 and itself["b_not_better"] == 1


def test_runs_on_other_pairs_or_without_pairs_are_refused_in_one_line(runs, capsys, tmp_path):
    assert main(["faces", "compare", str(runs / "a"), str(runs / "seed1")]) == 2
    err = capsys.readouterr().err.strip()
    assert "different LFW validation pairs" in err and len(err.splitlines()) == 1
    assert main(["faces", "compare", str(runs / "a"), str(tmp_path)]) == 2
    assert "has no validation_pairs.npz" in capsys.readouterr().err


def test_a_set_only_one_run_has_is_named_not_dropped(runs, tmp_path):
    # B: run a's pairs plus an extra_val set (as a run with --extra-val writes it).
    with np.load(runs / "a" / "validation_pairs.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update({k.replace("val_", "extra_val_", 1): v for k, v in arrays.items()})
    (tmp_path / "b").mkdir()
    np.savez(tmp_path / "b" / "validation_pairs.npz", **arrays)
    result = compare_runs(runs / "a", tmp_path / "b", resamples=20)
    assert list(result["sets"]) == ["val"] and result["only_in_one"] == {"extra_val": str(tmp_path / "b")}
    del arrays["extra_val_image_b"]
    np.savez(tmp_path / "b" / "validation_pairs.npz", **arrays)
    with pytest.raises(CnnlabError, match="lacks extra_val_image_b"):
        compare_runs(runs / "a", tmp_path / "b")


def test_the_module_fixtures_runs_cached_in_the_test_sessions_cache_not_the_users(runs, tmp_path_factory):
    # The fixture trained before any function-scoped fixture ran: the cache must be set session-wide.
    assert list((tmp_path_factory.getbasetemp() / "cache").glob("faces-*.npz"))
