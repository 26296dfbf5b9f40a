"""Issue 11, rows 9 and 10: an output folder that cannot be written is one line and exit 2,
checked before any data is loaded and leaving nothing behind; a run folder deleted while
training is recreated at the next checkpoint, whole, and training goes on."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

import cnnlab.core.files
import cnnlab.tasks.cifar
from cnnlab.cli import main
from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import check_output_dir, load_yaml
from cnnlab.data.cifar import synthetic_cifar
from cnnlab.training.engine import Engine, load_checkpoint

CIFAR_TINY = ["--data", "synthetic", "--epochs", "1", "--batch-size", "100", "--width-multiplier", "0.125",
              "--device", "cpu", "--no-progress"]
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def commands(out, missing_data):
    """Every command with an output folder. Faces read --data, which does not exist: had the
    command looked at its data first, the error would name that folder instead of --out."""
    faces_data = ["--data", str(missing_data), "--preset", "lfw"]
    return {
        "cifar train": ["cifar", "train", "--block", "A", "--out", str(out), *CIFAR_TINY],
        "cifar compare": ["cifar", "compare", "--blocks", "A", "--out", str(out), "--no-report", *CIFAR_TINY],
        "faces train": ["faces", "train", *faces_data, "--out", str(out)],
        "faces margins": ["faces", "margins", *faces_data, "--out", str(out)],
        "faces baseline": ["faces", "baseline", *faces_data, "--out", str(out)],
        "faces tune": ["faces", "tune", *faces_data, "--out", str(out), "--trials", "1"],
        "report": ["report", str(out)],
    }


COMMANDS = sorted(commands("o", "d"))


@pytest.fixture(autouse=True)
def _no_data_loading(monkeypatch):
    """CIFAR data loading fails loudly (exit 1, "unexpected error"): a command that reached it
    before checking --out fails these tests."""
    def load_data(*args, **kwargs):
        raise AssertionError("data was loaded before --out was checked")

    monkeypatch.setattr(cnnlab.tasks.cifar, "load_data", load_data)


def tree(root):
    return sorted((str(p.relative_to(root)), p.is_dir() or p.read_bytes()) for p in root.rglob("*"))


def run_command(name, out, tmp_path, capsys):
    before = tree(tmp_path)
    code = main(commands(out, tmp_path / "no-lfw")[name])
    err = capsys.readouterr().err
    assert tree(tmp_path) == before, "something was written"
    assert code == 2 and len(err.splitlines()) == 1, err
    what = "run folder" if name == "report" else "--out"
    return err.strip(), what


@pytest.mark.parametrize("name", COMMANDS)
def test_out_is_an_existing_file(name, tmp_path, capsys):
    taken = tmp_path / "results.txt"
    taken.write_text("keep me")
    line, what = run_command(name, taken, tmp_path, capsys)
    assert line == f"cnnlab: error: {what} {taken} is an existing file, not a folder"


@pytest.mark.parametrize("name", COMMANDS)
def test_out_is_under_a_file(name, tmp_path, capsys):
    taken = tmp_path / "results.txt"
    taken.write_text("keep me")
    line, what = run_command(name, taken / "run", tmp_path, capsys)
    assert line == f"cnnlab: error: {what} {taken / 'run'} cannot be created: {taken} is a file, not a folder"


@pytest.mark.skipif(AS_ROOT, reason="root writes through permission bits; the simulated test below covers root")
@pytest.mark.parametrize("name", COMMANDS)
def test_out_is_an_unwritable_folder(name, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line, what = run_command(name, locked, tmp_path, capsys)
    finally:
        locked.chmod(0o700)
    assert line == f"cnnlab: error: {what} {locked} is not writable: Permission denied"


@pytest.mark.parametrize("errno, reason", [(13, "Permission denied"), (30, "Read-only file system")])
@pytest.mark.parametrize("name", COMMANDS)
def test_a_folder_the_system_refuses_to_write(name, tmp_path, capsys, monkeypatch, errno, reason):
    # What a chmod 0500 folder (for a non-root user) or a read-only mount does to the probe,
    # simulated so that the test also runs as root.
    def refuse(*args, **kwargs):
        raise OSError(errno, reason)

    monkeypatch.setattr(cnnlab.core.files.tempfile, "mkstemp", refuse)
    line, what = run_command(name, tmp_path / "new" / "run", tmp_path, capsys)
    assert line == f"cnnlab: error: {what} {tmp_path / 'new' / 'run'} is not writable (in {tmp_path}): {reason}"


def test_check_output_dir_accepts_new_and_existing_folders_and_creates_nothing(tmp_path):
    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert check_output_dir(tmp_path) == tmp_path
    assert list(tmp_path.iterdir()) == []  # the probe file is gone, no folder was made


def test_check_output_dir_refuses_a_dangling_link(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(CnnlabError, match="is an existing file, not a folder"):
        check_output_dir(tmp_path / "link")


def test_cifar_eval_checks_the_run_folder_before_scoring(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train: {}\ntask: {}\nmodel: {block: A}\ndata: {root: synthetic}\n")
    monkeypatch.setattr(cnnlab.core.files.tempfile, "mkstemp", refuse)
    assert main(["cifar", "eval", str(run)]) == 2
    assert capsys.readouterr().err == f"cnnlab: error: run folder {run} is not writable: Read-only file system\n"


# ---------------------------------------------------------------------------- row 10
class DeletesRunDir:
    """A task whose run folder is deleted (rm -rf) at the start of one epoch."""

    def __init__(self, task, run_dir, epoch):
        self.task, self.run_dir, self.delete_at = task, run_dir, epoch

    def __getattr__(self, name):
        return getattr(self.task, name)

    def on_epoch_start(self, model, epoch):
        if epoch == self.delete_at:
            shutil.rmtree(self.run_dir)


def test_a_run_folder_deleted_mid_training_is_recreated_whole_and_training_goes_on(tmp_path):
    from test_engine import make_task, small_config, tiny_model

    torch.set_num_threads(1)
    splits = synthetic_cifar(n_train=200, n_test=50, val_size=50, size=16, seed=0)
    run = tmp_path / "run"
    engine = Engine(small_config(epochs=3), run, run_config={"task": {"note": "x"}})
    result = engine.fit(tiny_model(), DeletesRunDir(make_task(splits), run, epoch=1))
    assert len(result.history) == 3
    for name in ("config.yaml", "environment.json", "checkpoint.pt", "metrics.jsonl", "final.json"):
        assert (run / name).is_file(), name
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert load_checkpoint(run)["epoch"] == 3
    # What resume and `cifar eval` compare against is the run's own config, restored.
    assert engine.config_diff(load_yaml(run / "config.yaml")) == []
    resumed = Engine(small_config(epochs=3), run, run_config={"task": {"note": "x"}}).fit(
        tiny_model(), make_task(splits), resume=True)
    assert resumed.resumed_from_epoch == 3


def test_cifar_eval_of_a_missing_run_folder_is_one_line(tmp_path, capsys):
    assert main(["cifar", "eval", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == f"cnnlab: error: run folder not found: {tmp_path / 'nowhere'}\n"
