"""Rules of the LFW protocol and of the training recipe that a one-line change could break
silently: each test here fails on such a change (named in its docstring), while everything
else in the suite would still pass.

The protocol tests replace training with a stand-in (a fixed "trained" model and chosen pair
distances), so the threshold rules are checked on numbers picked to tell the right rule from
the wrong one, not on whatever a tiny training run happens to produce."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.data.faces import FaceDataset, load_identity_folders
from cnnlab.data.lfw import LFWProtocol
from cnnlab.metrics.verification import VerificationMetrics, accuracy_at, best_threshold
from cnnlab.models.siamese import SiameseNet
from cnnlab.tasks.faces import FaceVerificationTask, train_verifier, train_view1, train_view2
from cnnlab.tasks.faces.training import TrainedVerifier
from test_faces_train import make_fake_lfw, quiet, tiny_config


@pytest.fixture(scope="module")
def fake_lfw(tmp_path_factory) -> Path:
    return make_fake_lfw(tmp_path_factory.mktemp("lfw"))


def module_of(function):
    """The module a function looks its helpers up in (so a stand-in replaces the one it calls)."""
    return sys.modules[function.__module__]


def fake_trained(threshold: float) -> TrainedVerifier:
    """What `train_verifier` returns, with no model: the real dataclass, so a stand-in never
    lacks a field the runs read."""
    validation = VerificationMetrics(accuracy=0.8, threshold=threshold, auc=0.9, eer=0.1, tar_at_far={}, n_pairs=10)
    return TrainedVerifier(model=None, threshold=threshold, validation=validation, history=[], best_epoch=1,
                           train_time_s=0.0, cache_time_s=0.0, start_stage=0,
                           validation_retrieval={"queries": 4, "precision_at_1": 0.5, "r_precision": 0.5,
                                                 "map_at_r": 0.5})


def stand_in_training(monkeypatch, function, threshold: float, distance_of) -> list:
    """Training, embedding and saving replaced around `function`; `distance_of(i, j)` gives
    the distance of the pair of rows (i, j). Returns the `extra` dicts passed to save_model."""
    module = module_of(function)
    saved = []
    monkeypatch.setattr(module, "train_verifier", lambda *a, **k: fake_trained(threshold))
    monkeypatch.setattr(module, "embed_images", lambda model, images, **k: np.zeros((len(images), 16), np.float32))
    monkeypatch.setattr(module, "pair_distances",
                        lambda z, i, j, distance: np.array([distance_of(a, b) for a, b in zip(i, j)], np.float64))
    monkeypatch.setattr(module, "save_model", lambda model, path, extra=None: saved.append(extra))
    return saved


def decoded(root: Path) -> FaceDataset:
    protocol = LFWProtocol(root)
    dataset, _ = load_identity_folders(protocol.image_root, tiny_config().preprocess())
    return dataset


def test_view1_scores_devtest_at_the_validation_threshold_not_the_best_test_one(fake_lfw, tmp_path, monkeypatch):
    """Breaks if DevTest accuracy is taken at the best threshold on the test pairs (or any
    threshold other than the one calibrated on validation people)."""
    protocol = LFWProtocol(fake_lfw)
    test = decoded(fake_lfw).subset(protocol.view1().test_people)
    i, j, same = test.pair_indices(protocol.view1_test_pairs)
    is_same = {(a, b): s for a, b, s in zip(i.tolist(), j.tolist(), same.tolist())}
    # On the test pairs, 0.5 separates them perfectly; the calibrated 0.1 rejects every pair.
    saved = stand_in_training(monkeypatch, train_view1, 0.1, lambda a, b: 0.2 if is_same[(a, b)] else 0.8)
    metrics = train_view1(tiny_config(), fake_lfw, tmp_path, evaluate_test=True, log=quiet)
    t = metrics["test"]
    assert t["threshold"] == pytest.approx(0.1) and t["threshold_source"] == "calibrated"
    assert t["accuracy"] == pytest.approx(0.5)                       # the same-person half is rejected
    assert t["best_threshold_accuracy"] == 1.0 and t["best_threshold"] == pytest.approx(0.5)
    assert metrics["threshold"] == pytest.approx(0.1) and saved[-1]["threshold"] == pytest.approx(0.1)
    with np.load(tmp_path / "devtest_pairs.npz") as pairs:           # what the figures draw
        assert float(pairs["threshold"]) == pytest.approx(0.1)


def test_view2_threshold_of_a_fold_comes_from_the_other_nine_folds(fake_lfw, tmp_path, monkeypatch):
    """Breaks if a fold picks its threshold on its own test pairs, or on all pairs: the held
    fold alone is separable at 0.55, all pairs together are best split at 0.55 too, but the
    other nine folds alone are best split at 0.25, which rejects every pair of the held fold."""
    protocol = LFWProtocol(fake_lfw)
    i, j, same = decoded(fake_lfw).pair_indices(protocol.view2_pairs)
    folds = np.array([p.fold for p in protocol.view2_pairs])
    held = 3
    d = np.where(folds == held, np.where(same, 0.5, 0.6), np.where(same, 0.1, 0.7))
    # One hard pair of each kind among the other folds: 0.25 and 0.575 then tie there (one
    # error each; ties go to the smaller threshold), and the held fold's pairs tip the tie.
    d[np.flatnonzero((folds != held) & same)[0]] = 0.45
    d[np.flatnonzero((folds != held) & ~same)[0]] = 0.4
    lookup = dict(zip(zip(i.tolist(), j.tolist()), d.tolist()))
    assert best_threshold(d, same)[0] == pytest.approx(0.55)
    stand_in_training(monkeypatch, train_view2, 0.05, lambda a, b: lookup[(a, b)])
    module, calls = module_of(train_view2), []
    real_kfold = module.kfold_accuracy
    monkeypatch.setattr(module, "kfold_accuracy", lambda *a: calls.append(a) or real_kfold(*a))
    summary = train_view2(tiny_config(), fake_lfw, tmp_path, folds=[held], log=quiet)
    # The rule is the tested one of cnnlab.metrics.verification, given every pair's fold.
    assert len(calls) == 1 and np.array_equal(calls[0][2], folds)
    row = summary["folds"][0]
    assert row["fold"] == held + 1
    others = folds != held
    expected, _ = best_threshold(d[others], same[others])
    assert row["threshold"] == pytest.approx(expected) and row["threshold"] == pytest.approx(0.25)
    assert row["accuracy"] == pytest.approx(accuracy_at(d[~others], same[~others], expected)) == 0.5
    assert row["val_threshold"] == pytest.approx(0.05) and row["accuracy_val_threshold"] == pytest.approx(0.5)
    assert summary["accuracy"]["mean"] == pytest.approx(0.5)


def test_best_epoch_is_the_one_with_the_best_validation_auc_and_its_weights_are_kept(fake_lfw, tmp_path,
                                                                                       monkeypatch):
    """Breaks if the last epoch is kept (or reported) instead of the best-AUC one, if the
    epoch number is off by one, or if the best epoch's weights are not restored."""
    aucs = [0.6, 0.9, 0.7]
    task_module = module_of(FaceVerificationTask.evaluate)
    real_evaluate = task_module.evaluate
    calls, states = [], []

    def scripted(distances, same, threshold=None, **kw):
        report = real_evaluate(distances, same, threshold=threshold, **kw)
        calls.append(1)
        return dataclasses.replace(report, auc=aucs[len(calls) - 1]) if len(calls) <= len(aucs) else report

    original = FaceVerificationTask.evaluate

    def snapshot(self, model):
        out = original(self, model)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return out

    monkeypatch.setattr(task_module, "evaluate", scripted)
    monkeypatch.setattr(FaceVerificationTask, "evaluate", snapshot)
    config = tiny_config(epochs=3)
    dataset = decoded(fake_lfw)
    fit_people, val_people = LFWProtocol(fake_lfw).validation_people(config.val_fraction, config.seed)
    trained = train_verifier(config, dataset, [p for p in fit_people if p in dataset.people], val_people,
                             tmp_path, log=quiet)
    assert [h["val_auc"] for h in trained.history] == aucs
    assert trained.best_epoch == 2
    kept = trained.model.state_dict()
    assert all(torch.equal(kept[k].cpu(), states[1][k].cpu()) for k in kept)
    assert not all(torch.equal(kept[k].cpu(), states[2][k].cpu()) for k in kept)


# ---------------------------------------------------------------------------- the task's batches and loss
def synthetic_dataset(counts, side: int = 32) -> FaceDataset:
    labels = np.repeat(np.arange(len(counts)), counts)
    images = np.random.default_rng(0).integers(0, 256, (len(labels), side, side, 3), dtype=np.uint8)
    people = [f"P{k:02d}" for k in range(len(counts))]
    paths = [f"{people[q]}/{people[q]}_{n:04d}.jpg" for n, q in enumerate(labels)]
    return FaceDataset(images=images, labels=labels, people=people, paths=paths, root=Path("."))


def make_task(config, dataset: FaceDataset, fit_people: int) -> FaceVerificationTask:
    rows = np.arange(len(dataset))
    fit = rows[dataset.labels < fit_people]
    val = rows[dataset.labels >= fit_people]
    return FaceVerificationTask(config, dataset, fit, val, torch.device("cpu"), prefix=None, start_stage=0)


def test_task_reshuffles_people_every_epoch_and_trains_on_the_leftovers():
    """Breaks if the epoch's batches do not depend on the epoch (a fixed person order never
    trains the len(eligible) % P people left over after the last full batch)."""
    dataset = synthetic_dataset([3, 2, 4, 2, 3, 2, 2, 3, 2, 2])
    task = make_task(tiny_config(batch_size=6, k=2, val_pairs=4), dataset, fit_people=7)   # 7 people, P = 3
    orders, seen = [], set()
    for epoch in range(12):
        order = []
        for _, labels, *_ in task.train_batches(epoch):
            order += list(dict.fromkeys(labels.tolist()))
        orders.append(tuple(order))
        seen.update(order)
    assert all(len(o) == 6 for o in orders)                # two batches of 3 people; one waits each epoch
    assert len(set(orders)) > 1
    assert seen == set(range(7))


@pytest.mark.parametrize("margin", [0.5, 2.0])
def test_the_configured_margin_is_the_losss_margin(margin):
    """Breaks if the task builds its loss with a fixed margin (the margin study would then
    compare identical recipes): the training step's loss is the contrastive loss at m."""
    from cnnlab.metric_learning.losses import ContrastiveLoss
    dataset = synthetic_dataset([3, 2, 4, 2, 3, 2])
    config = tiny_config(batch_size=8, k=2, val_pairs=4, margin=margin, balance_pairs=False)
    task = make_task(config, dataset, fit_people=4)
    assert task.loss.margin == margin
    torch.manual_seed(0)
    model = SiameseNet.from_config(config.model_config()).train()
    batch = next(iter(task.train_batches(0)))
    loss, metrics = task.training_step(model, batch)
    x, labels = batch[0], batch[1]
    z = model.embed(x).float()
    i, j = torch.triu_indices(len(labels), len(labels), offset=1)
    expected = ContrastiveLoss(margin)(z[i], z[j], labels[i] == labels[j])
    torch.testing.assert_close(loss, expected)
    d = (z[i] - z[j]).norm(dim=1)
    same = labels[i] == labels[j]
    torch.testing.assert_close(metrics["pos_dist"], d[same].mean())
    torch.testing.assert_close(metrics["neg_dist"], d[~same].mean())
