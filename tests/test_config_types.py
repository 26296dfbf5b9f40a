"""Values from a YAML file are checked against the config's field types before any work:
one line naming the key, nothing written; number strings PyYAML leaves (`1e-3`) become numbers."""
import pytest

from cnnlab.cli import main
from cnnlab.core.config import build_config
from cnnlab.core.errors import CnnlabError
from cnnlab.tasks.faces import FaceTrainConfig
from cnnlab.training.engine import TrainConfig


@pytest.mark.parametrize("key, value, message", [
    ("epochs", 1.5, "invalid TrainConfig: epochs must be a whole number, got 1.5"),
    ("epochs", True, "invalid TrainConfig: epochs must be a whole number, got True"),
    ("epochs", "ten", "invalid TrainConfig: epochs must be a whole number, got 'ten'"),
    ("lr", "fast", "invalid TrainConfig: lr must be a number, got 'fast'"),
    ("lr", False, "invalid TrainConfig: lr must be a number, got False"),
    ("optimizer", 3, "invalid TrainConfig: optimizer must be a string, got 3"),
    ("channels_last", "yes", "invalid TrainConfig: channels_last must be true or false, got 'yes'"),
    ("channels_last", 1, "invalid TrainConfig: channels_last must be true or false, got 1"),
])
def test_a_value_of_the_wrong_type_is_one_line_naming_the_key(key, value, message):
    with pytest.raises(CnnlabError) as err:
        build_config(TrainConfig, {key: value})
    assert str(err.value) == message


def test_number_strings_and_whole_floats_are_numbers():
    config = build_config(TrainConfig, {"lr": "1e-3", "epochs": 3.0, "weight_decay": "5e-4", "batch_size": "64"})
    assert (config.lr, config.epochs, config.weight_decay, config.batch_size) == (1e-3, 3, 5e-4, 64)
    assert isinstance(config.epochs, int) and isinstance(config.batch_size, int)
    assert build_config(TrainConfig, {"progress": None}).progress is None  # optional stays optional


def test_face_config_types_are_checked_before_any_work():
    with pytest.raises(CnnlabError, match="embedding_dim must be a whole number, got 12.7"):
        build_config(FaceTrainConfig, {"embedding_dim": 12.7})
    assert build_config(FaceTrainConfig, {"lr": "3e-4"}).lr == 3e-4


def test_cifar_yaml_with_a_bad_type_writes_nothing_and_the_fixed_rerun_works(tmp_path, capsys):
    config, out = tmp_path / "recipe.yaml", tmp_path / "run"
    config.write_text("train:\n  epochs: 1.5\n  lr: 1e-3\n")
    args = ["cifar", "train", "--block", "A", "--config", str(config), "--out", str(out), "--data", "synthetic",
            "--batch-size", "100", "--width-multiplier", "0.125", "--device", "cpu", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == "cnnlab: error: invalid TrainConfig: epochs must be a whole number, got 1.5\n"
    assert not out.exists()
    config.write_text("train:\n  epochs: 1\n  lr: 1e-3\n")  # PyYAML reads 1e-3 as a string
    assert main(args) == 0
    assert "A: val" in capsys.readouterr().out


def test_faces_yaml_with_a_bad_type_fails_before_reading_data(tmp_path, capsys):
    config = tmp_path / "faces.yaml"
    config.write_text("embedding_dim: 12.7\n")
    # No data folder exists: the type error must come first.
    code = main(["faces", "train", "--config", str(config), "--data", str(tmp_path / "absent"),
                 "--out", str(tmp_path / "run")])
    assert code == 2
    assert capsys.readouterr().err == \
        "cnnlab: error: invalid FaceTrainConfig: embedding_dim must be a whole number, got 12.7\n"
    assert not (tmp_path / "run").exists()
