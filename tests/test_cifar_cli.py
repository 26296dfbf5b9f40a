import csv
import dataclasses
import json

import numpy as np
import pytest
import torch.nn as nn

from cnnlab.cli import build_parser, main
from cnnlab.cli.cifar import _recipe
from cnnlab.tasks import ClassificationConfig, count_macs
from cnnlab.tasks.cifar import ROW_FIELDS, resolve_recipe
from cnnlab.training.engine import TrainConfig

# Synthetic data, tiny network, two epochs: the whole comparison path in seconds.
TINY = ["--data", "synthetic", "--epochs", "2", "--batch-size", "50", "--lr", "0.2",
        "--width-multiplier", "0.125", "--device", "cpu", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "run"
    assert main(["cifar", "compare", "--blocks", "A", "se", "--out", str(out), "--no-report", *TINY]) == 0
    return out


def test_compare_writes_the_results_contract(compared):
    results = json.loads((compared / "results.json").read_text())
    assert set(results) >= {"preset", "recipe", "data", "environment", "rows"}
    assert results["preset"] == "full" and results["recipe"]["train"]["epochs"] == 2
    assert results["recipe"]["model"]["width_multiplier"] == 0.125
    assert results["data"]["source"] == "synthetic" and results["data"]["test"] == 200
    assert [r["block"] for r in results["rows"]] == ["A", "C"]  # the alias resolved
    for row in results["rows"]:
        assert list(row) == ROW_FIELDS
        for key in ("val_acc", "test_acc", "train_acc"):
            assert 0.0 <= row[key] <= 1.0
        assert row["params"] > 0 and row["macs"] > 0 and row["train_time_s"] > 0 and row["images_per_s"] > 0
        assert row["run_dir"] == row["block"]
        run = compared / row["run_dir"]
        for name in ("config.yaml", "environment.json", "metrics.jsonl", "final.json", "checkpoint.pt"):
            assert (run / name).stat().st_size > 0, name
        saved = np.load(run / "embeddings_test.npz")
        assert saved["features"].shape[0] == 200 and saved["logits"].shape == (200, 10)
        # The test accuracy is the one computed from the saved test logits.
        assert row["test_acc"] == pytest.approx(float((saved["logits"].argmax(1) == saved["labels"]).mean()))
    with open(compared / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["block"] for r in rows] == ["A", "C"] and float(rows[0]["test_acc"]) <= 1
    table = (compared / "results.md").read_text()
    assert "| A |" in table and "| C |" in table and "%" in table
    assert "Preset `full`: 2 epochs" in table and "width multiplier 0.125" in table and "device cpu" in table


def test_rerun_reuses_finished_blocks_and_keeps_their_rows(compared, capsys):
    before = (compared / "A" / "checkpoint.pt").stat().st_mtime_ns
    assert main(["cifar", "compare", "--blocks", "A", "--out", str(compared), "--no-report", *TINY]) == 0
    assert "reusing" in capsys.readouterr().out
    assert (compared / "A" / "checkpoint.pt").stat().st_mtime_ns == before
    rows = json.loads((compared / "results.json").read_text())["rows"]
    assert sorted(r["block"] for r in rows) == ["A", "C"]  # C's earlier row is not lost


def test_rerun_with_other_run_only_settings_reuses_finished_blocks(compared, capsys):
    # Where and how visibly a run happens (device, progress, compile) is not part of the
    # recipe: changing it neither refuses the folder nor retrains.
    before = (compared / "A" / "checkpoint.pt").stat().st_mtime_ns
    args = [*TINY[:-3], "--device", "auto", "--progress", "--compile"]
    assert main(["cifar", "compare", "--blocks", "A", "--out", str(compared), "--no-report", *args]) == 0
    assert "reusing" in capsys.readouterr().out
    assert (compared / "A" / "checkpoint.pt").stat().st_mtime_ns == before


def test_changed_recipe_on_same_out_is_refused_without_touching_results(compared, capsys):
    before = (compared / "results.json").read_text()
    args = ["cifar", "compare", "--blocks", "A", "--out", str(compared), "--no-report", *TINY, "--epochs", "3"]
    assert main(args) == 2
    assert "different recipe" in capsys.readouterr().err
    assert (compared / "results.json").read_text() == before


def test_eval_rescores_the_checkpoint(compared, capsys):
    assert main(["cifar", "eval", str(compared / "A")]) == 0
    scores = json.loads((compared / "A" / "eval.json").read_text())
    final = json.loads((compared / "A" / "final.json").read_text())
    assert scores["val_acc"] == pytest.approx(final["val_acc"])
    assert scores["test_acc"] == pytest.approx(final["test_acc"])


def test_compare_writes_the_report_from_its_files_and_prints_its_path_last(compared, capsys):
    assert main(["cifar", "compare", "--blocks", "A", "--out", str(compared), *TINY]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"report: {compared / 'report.html'}"
    assert lines[-2].startswith("Preset `full`: 2 epochs") and "| A |" in "\n".join(lines)
    for name in ("report.html", "report.md", "analysis.json"):
        assert (compared / name).stat().st_size > 0, name
    assert set(json.loads((compared / "analysis.json").read_text())["blocks"]) == {"A", "C"}


def test_unknown_block_exits_2_before_any_training(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["cifar", "compare", "--blocks", "A", "F", "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlab: error: unknown block 'F'") and "D-dw" in err and err.count("\n") == 1
    assert not out.exists()


def test_train_refuses_existing_run_unless_resume(tmp_path, capsys):
    out = str(tmp_path / "one")
    assert main(["cifar", "train", "--block", "E", "--out", out, *TINY[:-1]]) == 0
    assert main(["cifar", "train", "--block", "E", "--out", out, *TINY[:-1]]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["cifar", "train", "--block", "E", "--out", out, "--resume", *TINY[:-1]]) == 0


def test_bad_values_are_one_line_errors(tmp_path, capsys):
    assert main(["cifar", "train", "--block", "A", "--out", str(tmp_path), "--lr", "-1", *TINY[2:4]]) == 2
    assert capsys.readouterr().err == "cnnlab: error: invalid TrainConfig: lr must be a positive number, got -1.0\n"
    config = tmp_path / "recipe.yaml"
    config.write_text("train:\n  epochs: 3\nmodel:\n  width_multiplier: 0.5\n")
    recipe = resolve_recipe("quick", config, {"train": {"epochs": 4}})
    assert recipe.train.epochs == 4 and recipe.model["width_multiplier"] == 0.5 and recipe.data.train_subset
    config.write_text("train:\n  epoch: 3\n")
    assert main(["cifar", "compare", "--out", str(tmp_path / "x"), "--config", str(config), *TINY]) == 2
    assert "unknown TrainConfig option 'epoch'" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, message", [
    ("--optimizer", "bogus", "optimizer must be sgd or adamw, got 'bogus'"),
    ("--schedule", "linear", "schedule must be one of onecycle, cosine, constant, got 'linear'"),
    ("--precision", "fp16", "precision must be one of auto, auto-cuda, fp32, bf16, got 'fp16'"),
])
def test_bad_choice_is_the_dataclass_one_line_error(tmp_path, capsys, flag, value, message):
    # Valid values are checked once, by TrainConfig, not again by argparse.
    out = tmp_path / "never"
    assert main(["cifar", "compare", "--blocks", "A", "--out", str(out), *TINY, flag, value]) == 2
    assert capsys.readouterr().err == f"cnnlab: error: invalid TrainConfig: {message}\n"
    assert not out.exists()


@pytest.mark.parametrize("flags, section, field, value", [
    (["--data", "synthetic"], "data", "root", "synthetic"),
    (["--download"], "data", "download", True),
    (["--val-size", "300"], "data", "val_size", 300),
    (["--train-subset", "500"], "data", "train_subset", 500),
    (["--epochs", "7"], "train", "epochs", 7),
    (["--no-channels-last"], "train", "channels_last", False),
    (["--compile"], "train", "compile", True),
    (["--device", "cpu"], "train", "device", "cpu"),
    (["--progress"], "train", "progress", True),
    (["--cutout", "8"], "task", "cutout", 8),
    (["--no-flip"], "task", "flip", False),
    (["--width-multiplier", "0.5"], "model", "width_multiplier", 0.5),
    (["--dropout", "0.1"], "model", "dropout", 0.1),
])
def test_a_recipe_flag_sets_its_field_and_leaves_the_preset_otherwise(flags, section, field, value):
    args = build_parser().parse_args(["cifar", "train", "--block", "A", "--out", "unused", "--preset", "quick", *flags])
    recipe, expected = _recipe(args).to_dict(), resolve_recipe("quick").to_dict()
    assert recipe[section][field] == value
    expected[section][field] = value
    assert recipe == expected


def test_every_train_and_task_setting_is_a_flag(capsys):
    with pytest.raises(SystemExit):
        main(["cifar", "compare", "--help"])
    text = capsys.readouterr().out
    names = [f.name for cls in (TrainConfig, ClassificationConfig) for f in dataclasses.fields(cls)]
    names += ["data", "download", "val_size", "train_subset", "width_multiplier", "dropout", "preset", "config"]
    missing = [n for n in names if f"--{n.replace('_', '-')}" not in text]
    assert not missing


def test_mac_counter_matches_a_hand_count():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),             # 8x8 out: 64 * 8 * (3*9)  = 13,824
        nn.Conv2d(8, 8, 3, padding=1, groups=4),   # 64 * 8 * (2*9)           =  9,216
        nn.Conv2d(8, 16, 1, stride=2),             # 4x4 out: 16 * 16 * 8     =  2,048
        nn.Flatten(), nn.Linear(256, 10))          # 256 * 10                 =  2,560
    assert count_macs(model, (3, 8, 8)) == 13_824 + 9_216 + 2_048 + 2_560
    assert model.training  # the count does not change the mode


def test_mac_counter_on_blocknet_stem():
    from cnnlab.models import create_model
    full = create_model("A")
    # Stem 3->64 at 32x32 alone is 1024*64*27 = 1,769,472 MACs; the whole net ~0.4 GMACs.
    assert 0.35e9 < count_macs(full) < 0.45e9
    assert count_macs(create_model("E")) < count_macs(full) < count_macs(create_model("D"))


def test_benchmark_script_alternates_paths_and_reports_ratio_and_accuracy(capsys):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cifar.py"
    spec = importlib.util.spec_from_file_location("bench_cifar", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--data", "synthetic", "--rounds", "2", "--steps", "2", "--workers", "0",
                       "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    rounds = [line for line in out.splitlines() if line.startswith("round")]
    assert [line.split(":")[1].split()[0] for line in rounds] == ["device-resident", "DataLoader"] * 2
    assert out.count("images/s   accuracy ") == 2 and "ratio (device-resident / DataLoader):" in out


def test_every_recipe_flag_takes_its_help_from_the_config_field(capsys):
    """Help text lives once, on the dataclass field (`config.option`); the flags read it."""
    import dataclasses

    from cnnlab.tasks.cifar import CifarDataConfig
    from cnnlab.training.engine import TrainConfig
    assert [f.name for f in dataclasses.fields(TrainConfig) if not f.metadata.get("help")] == []
    assert [f.name for f in dataclasses.fields(ClassificationConfig) if not f.metadata.get("help")] == []
    assert [f.name for f in dataclasses.fields(CifarDataConfig) if not f.metadata.get("help")] == []
    with pytest.raises(SystemExit):
        main(["cifar", "compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(TrainConfig):
        assert " ".join(field.metadata["help"].split()) in text, field.name
    assert "stratified subset of training images" in text and "label smoothing of the training loss" in text
