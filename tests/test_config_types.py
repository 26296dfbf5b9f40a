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


# ---------------------------------------------------------------------------- issue 32, items 5 and 6
CIFAR_ARGS = ["--block", "A", "--data", "synthetic", "--batch-size", "100", "--width-multiplier", "0.125",
              "--epochs", "1", "--device", "cpu", "--no-progress"]


@pytest.mark.parametrize("yaml_text, section", [
    ("train: [1, 2]\n", "train"), ("train: 5\n", "train"), ("data: [1]\n", "data"), ("model: [1]\n", "model"),
    ("task: some text\n", "task"),
])
def test_a_config_section_that_is_not_a_mapping_is_one_line_exit_2(tmp_path, capsys, yaml_text, section):
    """Item 5: was AttributeError, exit 1 ("unexpected error")."""
    config, out = tmp_path / "recipe.yaml", tmp_path / "run"
    config.write_text(yaml_text)
    assert main(["cifar", "train", "--config", str(config), "--out", str(out), *CIFAR_ARGS]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cnnlab: error: config file {config}: section {section!r} must be a mapping") \
        and err.count("\n") == 1, err
    assert not out.exists()


def test_build_config_refuses_a_source_that_is_not_a_mapping():
    with pytest.raises(CnnlabError, match=r"^invalid TrainConfig: expected a mapping of its options .*got a list"):
        build_config(TrainConfig, [1, 2])


@pytest.mark.parametrize("value, message", [
    ("abc", "invalid BlockNetConfig: depths must be a list of whole numbers, got 'abc'"),
    (3, "invalid BlockNetConfig: depths must be a list of whole numbers, got 3"),
    ([2, "x", 3], "invalid BlockNetConfig: depths must be a list of whole numbers, got [2, 'x', 3]"),
    ([2, 1.5, 3], "invalid BlockNetConfig: depths must be a list of whole numbers, got [2, 1.5, 3]"),
])
def test_a_list_field_of_the_wrong_type_names_the_field_and_the_type(value, message):
    """Item 6: was "'<' not supported between instances of 'str' and 'int'"."""
    from cnnlab.models import BlockNetConfig
    with pytest.raises(CnnlabError) as err:
        build_config(BlockNetConfig, {"depths": value})
    assert str(err.value) == message
    assert build_config(BlockNetConfig, {"depths": ["2", 3.0, 3]}).depths == (2, 3, 3)  # as scalars are


def test_cifar_yaml_with_depths_abc_is_one_line(tmp_path, capsys):
    config = tmp_path / "recipe.yaml"
    config.write_text("model:\n  depths: abc\n")
    assert main(["cifar", "train", "--config", str(config), "--out", str(tmp_path / "run"), *CIFAR_ARGS]) == 2
    assert capsys.readouterr().err == \
        "cnnlab: error: invalid BlockNetConfig: depths must be a list of whole numbers, got 'abc'\n"


def test_synthetic_data_refuses_sizes_larger_than_it_and_applies_the_others(tmp_path, capsys):
    """Item 6: `data: {val_size: 999999}` with synthetic data trained without a word."""
    from cnnlab.tasks.cifar import resolve_recipe
    config = tmp_path / "recipe.yaml"
    config.write_text("data:\n  root: synthetic\n  val_size: 999999\n")
    out = tmp_path / "run"
    assert main(["cifar", "train", "--config", str(config), "--out", str(out), *CIFAR_ARGS]) == 2
    assert capsys.readouterr().err == ("cnnlab: error: val_size 999999 must be below the 1000 synthetic training "
                                       "images (synthetic_train)\n")
    assert not out.exists()
    with pytest.raises(CnnlabError, match="train_subset 5000 is larger than the 800 synthetic training images"):
        resolve_recipe("quick", overrides={"data": {"root": "synthetic", "train_subset": 5000}})
    given = resolve_recipe("full", overrides={"data": {"root": "synthetic", "val_size": 50, "train_subset": 100}})
    assert (given.data.synthetic_val, given.data.synthetic_train) == (50, 150)
    preset = resolve_recipe("quick", overrides={"data": {"root": "synthetic"}})  # the preset's sizes are CIFAR-10's
    assert (preset.data.synthetic_val, preset.data.synthetic_train) == (200, 1000)


def test_the_docs_say_number_strings_are_converted_on_purpose():
    """Item 6: `lr: "1e-3"` becomes 0.001 by design, and the page on config files says why."""
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert "converted on purpose" in text and 'lr: "1e-3"' in text
    assert build_config(TrainConfig, {"lr": "1e-3"}).lr == 1e-3
