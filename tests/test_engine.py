import json
import math

import pytest
import torch
import yaml

from cnnlab.core.config import build_config
from cnnlab.core.errors import CnnlabError
from cnnlab.data.cifar import synthetic_cifar
from cnnlab.models import create_model
from cnnlab.tasks import ClassificationConfig, ClassificationTask
from cnnlab.training.engine import Engine, TrainConfig, load_checkpoint, load_weights, seed_everything
from cnnlab.training.optim import LRSchedule
from cnnlab.training.task import Callback
from interrupt import StopAtEpoch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def splits():
    # 16x16 images keep each test to seconds; the network's three 2x2 pools still fit.
    return synthetic_cifar(n_train=600, n_test=100, val_size=100, size=16, seed=0)


def make_task(splits, batch_size=25, **config):
    return ClassificationTask.from_arrays(splits.train_images, splits.train_labels, splits.val_images,
                                          splits.val_labels, ClassificationConfig(**config),
                                          batch_size=batch_size, device="cpu")


def tiny_model(seed=0, block="A"):
    seed_everything(seed)
    return create_model(block, width_multiplier=0.125)


def small_config(**changes):
    # fp32 pinned: `auto` means bf16 on an AMX CPU, and these tests are about the loop, the
    # same on every machine (bf16 on the CPU: test_precision.py).
    return TrainConfig(**{"epochs": 3, "batch_size": 25, "lr": 0.2, "device": "cpu", "progress": False,
                          "precision": "fp32", **changes})


class PoisonAtEpoch(StopAtEpoch):
    """Makes the loss non-finite on the second step of one epoch."""

    def on_epoch_start(self, model, epoch):
        self.epoch, self.step = epoch, 0

    def training_step(self, model, batch):
        loss, metrics = self.task.training_step(model, batch)
        self.step += 1
        if self.epoch == self.stop_epoch and self.step == 2:
            loss = loss * float("nan")
        return loss, metrics


def test_engine_learns_synthetic_data_well_above_chance(splits, tmp_path):
    result = Engine(small_config(epochs=4), tmp_path).fit(tiny_model(), make_task(splits))
    assert result.final["val_acc"] >= 0.6  # chance is 0.1
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_run_directory_holds_config_environment_metrics_final(splits, tmp_path):
    Engine(small_config(epochs=2), tmp_path, run_config={"task": ClassificationConfig()}).fit(
        tiny_model(), make_task(splits))
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["train"]["lr"] == 0.2 and config["task"]["label_smoothing"] == 0.1
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["cpu_count"] >= 1
    assert (env["world_size"], env["backend"]) == (1, None)  # one plain process, no torchrun
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s"):
            assert math.isfinite(row[key]), key
        assert 0 <= row["train_acc"] <= 1 and 0 <= row["val_acc"] <= 1
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["epochs"] == 2 and final["val_acc"] == rows[-1]["val_acc"] and final["train_time_s"] > 0
    assert load_checkpoint(tmp_path)["epoch"] == 2


def test_resume_after_interruption_gives_the_same_weights(splits, tmp_path):
    config = small_config(ema=0.9)
    reference = Engine(config, tmp_path / "straight").fit(tiny_model(), make_task(splits))

    with pytest.raises(KeyboardInterrupt):
        Engine(config, tmp_path / "resumed").fit(tiny_model(), StopAtEpoch(make_task(splits), 2))
    assert load_checkpoint(tmp_path / "resumed")["epoch"] == 2
    # A fresh process would rebuild everything: new model (other init), new task, new engine.
    resumed = Engine(config, tmp_path / "resumed").fit(tiny_model(seed=1), make_task(splits), resume=True)

    assert resumed.resumed_from_epoch == 2
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(reference.eval_model.state_dict().values(), resumed.eval_model.state_dict().values()):
        assert torch.equal(a, b)
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert resumed.final["val_acc"] == reference.final["val_acc"]


def test_resume_refuses_a_changed_recipe(splits, tmp_path):
    Engine(small_config(epochs=1), tmp_path).fit(tiny_model(), make_task(splits))
    with pytest.raises(CnnlabError, match="train.lr"):
        Engine(small_config(epochs=1, lr=0.1), tmp_path).fit(tiny_model(), make_task(splits), resume=True)


def test_resume_ignores_exactly_the_run_only_settings():
    from dataclasses import fields

    from cnnlab.core.config import RUN_ONLY_FIELDS
    from cnnlab.core.files import to_plain

    engine = Engine(small_config(), run_config={"task": {"cutout": 0}})
    names = [f.name for f in fields(TrainConfig)]
    assert set(RUN_ONLY_FIELDS) <= set(names)  # a renamed field must not drop out silently
    for name in names:
        saved = {"train": {**to_plain(engine.config), name: "changed"}, "task": {"cutout": 0}}
        assert engine.config_diff(saved) == ([] if name in RUN_ONLY_FIELDS else [f"train.{name}"]), name
    # Only the train section's run-only settings are free; a task option never is.
    assert engine.config_diff({"train": to_plain(engine.config), "task": {"cutout": 8}}) == ["task.cutout"]


def test_non_finite_loss_stops_with_epoch_and_step_and_keeps_last_checkpoint(splits, tmp_path):
    with pytest.raises(CnnlabError) as err:
        Engine(small_config(), tmp_path).fit(tiny_model(), PoisonAtEpoch(make_task(splits), 1))
    message = str(err.value)
    assert "epoch 2, step 2" in message and "checkpoint (epoch 1)" in message and "\n" not in message
    assert load_checkpoint(tmp_path)["epoch"] == 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    for value in load_checkpoint(tmp_path)["model"].values():
        assert torch.isfinite(value.float()).all()


def test_invalid_train_config_is_one_line_error():
    with pytest.raises(ValueError, match="lr must be a positive"):
        TrainConfig(lr=-0.1)
    with pytest.raises(CnnlabError) as err:
        build_config(TrainConfig, {"lr": -1.0})
    assert str(err.value) == "invalid TrainConfig: lr must be a positive number, got -1.0"
    for bad in ({"schedule": "step"}, {"optimizer": "lamb"}, {"warmup": 1.5}, {"ema": 1.0}, {"epochs": 0}):
        with pytest.raises(CnnlabError):
            build_config(TrainConfig, bad)


def test_one_cycle_peaks_at_lr_then_decays_to_near_zero():
    schedule = LRSchedule("onecycle", total_steps=100, warmup_steps=20)
    factors = [schedule(s) for s in range(100)]
    assert max(factors) == 1.0 and factors.index(1.0) == 19
    assert factors[0] == pytest.approx(1 / 20)
    assert all(a < b for a, b in zip(factors[:19], factors[1:20]))      # rising
    assert all(a > b for a, b in zip(factors[20:99], factors[21:100]))  # falling
    assert 0 < factors[-1] <= 1 / 80 + 1e-12
    cosine = LRSchedule("cosine", 100, 0)
    assert cosine(0) == 1.0 and cosine(50) == pytest.approx(0.5, abs=0.02) and cosine(99) < 0.01
    assert {LRSchedule("constant", 100, 10)(s) for s in range(10, 100)} == {1.0}


def test_engine_applies_the_schedule_per_step(splits):
    engine = Engine(small_config(epochs=2, warmup=0.5))  # 20 steps per epoch: peak at the end of epoch 1
    result = engine.fit(tiny_model(), make_task(splits))
    lrs = [r["lr"] for r in result.history]
    assert lrs[0] == pytest.approx(0.2)
    assert lrs[1] == pytest.approx(0.2 / 20)


def test_ema_model_is_what_gets_evaluated(splits):
    seen = []

    class Recording(StopAtEpoch):
        def evaluate(self, model):
            seen.append(model)
            return {"first_weight": float(next(model.parameters()).sum())}

    result = Engine(small_config(epochs=2, ema=0.5)).fit(tiny_model(), Recording(make_task(splits), -1))
    assert result.eval_model is not result.model and result.final["ema"] is True
    assert all(model is result.eval_model for model in seen)  # the EMA model, every epoch
    ema_weight, raw_weight = next(result.eval_model.parameters()), next(result.model.parameters())
    assert not torch.equal(ema_weight, raw_weight)
    # The reported validation is the EMA weights' (the last epoch's, as scored then).
    assert result.final["val_first_weight"] == pytest.approx(float(ema_weight.sum()), rel=1e-6)


class ScriptedVal(StopAtEpoch):
    """Validation scores scripted per epoch, so which epoch is best is known in advance."""

    def __init__(self, task, scores, stop_epoch=-1):
        super().__init__(task, stop_epoch)
        self.scores, self.calls = scores, 0

    def evaluate(self, model):
        score = self.scores[self.calls]
        self.calls += 1
        return {**self.task.evaluate(model), "score": score}


class Recorder(Callback):
    def __init__(self):
        self.seen = []

    def on_validation(self, epoch, record, selected_epoch):
        self.seen.append((epoch, record["val_score"], selected_epoch))


def test_the_engine_keeps_the_selected_epoch_and_every_record_agrees(splits, tmp_path):
    config = small_config(epochs=4, select_metric="score")
    recorder = Recorder()
    weights = {}

    class Snapshot(Callback):
        def on_validation(self, epoch, record, selected_epoch):
            weights[epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    model = tiny_model()
    result = Engine(config, tmp_path).fit(model, ScriptedVal(make_task(splits), [0.2, 0.9, 0.5, 0.7]),
                                          callbacks=[recorder, Snapshot()])
    assert recorder.seen == [(1, 0.2, 1), (2, 0.9, 2), (3, 0.5, 2), (4, 0.7, 2)]
    final = json.loads((tmp_path / "final.json").read_text())
    assert (final["selected_epoch"], final["epoch"], final["val_score"], final["epochs"]) == (2, 2, 0.9, 4)
    assert final["train_time_s"] == pytest.approx(sum(r["epoch_time_s"] for r in result.history))
    assert result.selected_epoch == 2 and result.eval_model is result.model  # no EMA: one module
    for name, value in result.eval_model.state_dict().items():  # the result holds epoch 2's weights
        assert torch.equal(value, weights[2][name]), name
    assert load_checkpoint(tmp_path)["selected"]["epoch"] == 2
    reloaded = load_weights(tmp_path, tiny_model(seed=3))  # what model.pt / eval would load
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, weights[2][name]), name
    with pytest.raises(ValueError, match="select_mode must be max or min"):
        small_config(select_mode="best")


def test_selection_survives_an_interruption(splits, tmp_path):
    config = small_config(epochs=4, select_metric="score", select_mode="min")
    scores = [0.5, 0.1, 0.4, 0.3]  # min mode: epoch 2, chosen before the interruption
    with pytest.raises(KeyboardInterrupt):
        Engine(config, tmp_path).fit(tiny_model(), ScriptedVal(make_task(splits), scores, stop_epoch=3))
    result = Engine(config, tmp_path).fit(tiny_model(seed=1), ScriptedVal(make_task(splits), scores[3:]),
                                          resume=True)
    assert result.final["selected_epoch"] == 2 and result.final["val_score"] == 0.1


def test_without_a_select_metric_the_last_epoch_is_the_result(splits, tmp_path):
    result = Engine(small_config(epochs=2), tmp_path).fit(tiny_model(), make_task(splits))
    assert result.final["selected_epoch"] == result.selected_epoch == 2 and result.final["select_metric"] is None
    assert load_checkpoint(tmp_path)["selected"] is None


def test_the_engine_seeds_the_run_once_and_training_starts_from_the_seed(splits):
    build = lambda: create_model("A", width_multiplier=0.125, dropout=0.3)  # noqa: E731 (dropout: draws)
    engine = Engine(small_config(epochs=1, seed=7))
    model = engine.build_model(build)
    torch.manual_seed(123)  # draws between building and training do not reach training
    torch.rand(10)
    result = engine.fit(model, make_task(splits))
    # The same as a run seeded by hand before building the model, whose fit seeds itself.
    seed_everything(7)
    reference = Engine(small_config(epochs=1, seed=7)).fit(build(), make_task(splits))
    for (name, a), b in zip(result.model.state_dict().items(), reference.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert result.history[0]["train_loss"] == reference.history[0]["train_loss"]


def test_the_schedule_length_comes_without_building_an_epoch(splits):
    class CountsEpochs(StopAtEpoch):
        built = []

        def train_batches(self, epoch):
            self.built.append(epoch)
            return super().train_batches(epoch)

    task = CountsEpochs(make_task(splits), -1)
    result = Engine(small_config(epochs=2)).fit(tiny_model(), task)
    assert task.built == [0, 1] and task.steps_per_epoch() == 20  # 500 images in batches of 25
    assert len(result.history) == 2


def test_final_json_keeps_what_the_caller_added(splits, tmp_path):
    engine = Engine(small_config(epochs=1), tmp_path)
    result = engine.fit(tiny_model(), make_task(splits))
    engine.write_final({**result.final, "test_acc": 0.5})
    assert json.loads((tmp_path / "final.json").read_text()) == {**result.final, "test_acc": 0.5}
    again = Engine(small_config(epochs=1), tmp_path).fit(tiny_model(), make_task(splits), resume=True)
    assert json.loads((tmp_path / "final.json").read_text())["test_acc"] == 0.5  # a finished run resumed
    assert again.resumed_from_epoch == 1


class WithLearnedScale(StopAtEpoch):
    """The task's loss times a learned positive scale: a loss with parameters of its own
    (`Task.loss_module`), interrupted at `stop_epoch` when one is given."""

    def __init__(self, task, epoch=None, groups=None):
        super().__init__(task, epoch)
        self.scale, self.groups = torch.nn.Linear(1, 1, bias=False), groups
        torch.nn.init.constant_(self.scale.weight, 0.3)

    def loss_module(self):
        return self.scale

    def param_groups(self, model):
        return self.groups(model, self.scale) if self.groups else None

    def training_step(self, model, batch):
        loss, metrics = self.task.training_step(model, batch)
        return loss * torch.nn.functional.softplus(self.scale.weight).squeeze(), metrics


def test_a_loss_with_parameters_is_trained_checkpointed_and_resumed_exactly(splits, tmp_path):
    config = small_config()
    straight = WithLearnedScale(make_task(splits))
    reference = Engine(config, tmp_path / "straight").fit(tiny_model(), straight)
    assert straight.scale.weight.item() != pytest.approx(0.3)  # optimised beside the model
    with pytest.raises(KeyboardInterrupt):
        Engine(config, tmp_path / "resumed").fit(tiny_model(), WithLearnedScale(make_task(splits), 2))
    assert "weight" in load_checkpoint(tmp_path / "resumed")["loss"]
    again = WithLearnedScale(make_task(splits))
    resumed = Engine(config, tmp_path / "resumed").fit(tiny_model(seed=1), again, resume=True)
    assert torch.equal(again.scale.weight, straight.scale.weight)
    for a, b in zip(reference.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_param_groups_that_leave_out_the_loss_parameters_are_refused(splits, tmp_path):
    task = WithLearnedScale(make_task(splits), groups=lambda model, scale: [{"params": list(model.parameters())}])
    with pytest.raises(ValueError, match="leave out parameters of its loss_module"):
        Engine(small_config(epochs=1), tmp_path).fit(tiny_model(), task)
    task = WithLearnedScale(make_task(splits), groups=lambda model, scale: [
        {"params": list(model.parameters())}, {"params": list(scale.parameters()), "lr_scale": 0.0}])
    Engine(small_config(epochs=1), tmp_path).fit(tiny_model(), task)
    assert task.scale.weight.item() == pytest.approx(0.3)  # its own group: lr 0 leaves it alone
