"""TensorBoard event files of a training run (`--tensorboard`), read back with TensorBoard's
own reader: the lr of every step and the metrics.jsonl scalars of every epoch, against the
optimizer step; a resumed run logs no step twice; without the package, one line says so."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from cnnlab.core.errors import CnnlabError
from cnnlab.training.engine import Engine
from cnnlab.training.optim import LRSchedule
from cnnlab.training.tensorboard_log import TensorBoardLog
from ddp_worker import BATCH, N_TRAIN, plain_config, plain_model, plain_task

STEPS = N_TRAIN // BATCH


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return events


def test_event_file_holds_the_lr_of_every_step_and_the_metrics_of_every_epoch(tmp_path):
    config = plain_config(epochs=2, tensorboard=True)
    Engine(config, tmp_path).fit(plain_model(), plain_task())
    events = read_events(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert set(events.Tags()["scalars"]) == {"lr"} | (set(rows[0]) - {"epoch", "lr"})
    schedule = LRSchedule(config.schedule, config.epochs * STEPS, int(config.warmup * config.epochs * STEPS))
    lr = events.Scalars("lr")
    assert [e.step for e in lr] == list(range(1, 2 * STEPS + 1))
    assert [e.value for e in lr] == pytest.approx([config.lr * schedule(s) for s in range(2 * STEPS)], rel=1e-6)
    for key in set(rows[0]) - {"epoch", "lr"}:
        logged = events.Scalars(key)
        assert [e.step for e in logged] == [STEPS, 2 * STEPS], key
        assert [e.value for e in logged] == pytest.approx([r[key] for r in rows], rel=1e-6), key


def test_resumed_run_logs_every_step_once_and_a_fresh_run_starts_clean(tmp_path):
    def stop(epoch, step):
        if epoch == 1 and step == 3:
            raise KeyboardInterrupt  # mid-epoch 2, after two of its steps were logged

    config = plain_config(epochs=2, tensorboard=True)
    with pytest.raises(KeyboardInterrupt):
        Engine(config, tmp_path).fit(plain_model(), plain_task(stop=stop), resume=True)
    assert [e.step for e in read_events(tmp_path).Scalars("lr")] == list(range(1, STEPS + 3))
    Engine(config, tmp_path).fit(plain_model(), plain_task(), resume=True)
    events = read_events(tmp_path)
    # The interrupted run's steps after its checkpoint are dropped, the resumed run's kept.
    assert [e.step for e in events.Scalars("lr")] == list(range(1, 2 * STEPS + 1))
    assert [e.step for e in events.Scalars("val_acc")] == [STEPS, 2 * STEPS]
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2

    Engine(config, tmp_path).fit(plain_model(), plain_task())  # not a resume: the old curves go
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    assert [e.step for e in read_events(tmp_path).Scalars("lr")] == list(range(1, 2 * STEPS + 1))


def test_no_event_files_unless_asked(tmp_path):
    Engine(plain_config(epochs=1), tmp_path).fit(plain_model(), plain_task())
    assert not list(tmp_path.glob("events.out.tfevents.*")) and (tmp_path / "metrics.jsonl").is_file()


def test_without_the_tensorboard_package_the_error_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(CnnlabError, match=r"pip install 'cnnlab\[tensorboard\]'"):
        TensorBoardLog(tmp_path)
    with TensorBoardLog(None) as board:  # logging off never imports it
        board.step(1, 0.1)
        board.epoch({"train_loss": 1.0}, 1)


def test_tensorboard_and_sync_bn_are_flags_of_the_training_commands(tmp_path):
    from cnnlab.cli import build_parser
    from cnnlab.cli.cifar import _recipe
    from cnnlab.cli.options import face_config_from_args
    parser = build_parser()
    args = parser.parse_args(["cifar", "train", "--block", "A", "--out", str(tmp_path), "--tensorboard", "--sync-bn"])
    recipe = _recipe(args)
    assert recipe.train.tensorboard and recipe.train.sync_bn
    assert not _recipe(parser.parse_args(["cifar", "train", "--block", "A", "--out", str(tmp_path)])).train.tensorboard
    faces = face_config_from_args(parser.parse_args(["faces", "train", "--preset", "lfw", "--tensorboard",
                                                     "--sync-bn"]))
    assert faces.train_config().tensorboard and faces.train_config().sync_bn
