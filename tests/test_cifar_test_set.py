"""The CIFAR protocol keeps the official test set out of training, validation and model
selection: the model sees no test image until training has finished, then every test image
exactly once (the one scoring pass whose saved logits give the reported test accuracy), and a
rerun that reuses a finished block never scores it again.

Checked on what the network actually receives (a hook on its stem), so a test image reaching
it by any route (a validation loader built from the test split, a per-epoch test score) shows."""
import pytest
import torch

import cnnlab.tasks.cifar as cifar
from cnnlab.data.cifar import synthetic_cifar
from cnnlab.data.loader import CIFAR10_MEAN, CIFAR10_STD, normalize
from cnnlab.training.engine import Engine


class SeenTestImages:
    """Which test images the model's stem received, per phase: before, during and after fit."""

    def __init__(self, splits):
        self.phase = "before"
        images = torch.as_tensor(splits.test_images).permute(0, 3, 1, 2)
        # The exact input the evaluation loader builds (no augmentation), one row per image.
        self.test = normalize(images, CIFAR10_MEAN, CIFAR10_STD).flatten(1)
        self.reset()

    def reset(self):
        self.seen = {"before": [], "fit": [], "after": []}
        self.images = {"before": 0, "fit": 0, "after": 0}
        self.split_reads = []

    def record(self, batch: torch.Tensor) -> None:
        rows = batch.detach().float().flatten(1)
        # Exact distances (the matrix-product shortcut rounds too coarsely to tell 0 apart).
        nearest = torch.cdist(rows, self.test, compute_mode="donot_use_mm_for_euclid_dist").min(1)
        self.seen[self.phase] += nearest.indices[nearest.values < 1e-3].tolist()
        self.images[self.phase] += len(rows)


class WatchedSplits:
    """The splits, noting in which phase the test arrays are read."""

    def __init__(self, splits, watch):
        self._splits, self._watch = splits, watch

    def __getattr__(self, name):
        if name.startswith("test_"):
            self._watch.split_reads.append(self._watch.phase)
        return getattr(self._splits, name)


@pytest.fixture
def watched(monkeypatch):
    torch.set_num_threads(1)  # tiny batches: see one_torch_thread in tests/conftest.py
    splits = synthetic_cifar(600, 100, val_size=100, seed=0)
    watch = SeenTestImages(splits)
    real_blocknet, real_fit = cifar.BlockNet, Engine.fit

    def blocknet(config):
        model = real_blocknet(config)
        # A plain function, not a bound method: the EMA copy (deepcopy) keeps reporting here.
        model.stem.register_forward_pre_hook(lambda module, args: watch.record(args[0]))
        return model

    def fit(self, *args, **kwargs):
        watch.phase = "fit"
        try:
            return real_fit(self, *args, **kwargs)
        finally:
            watch.phase = "after"

    monkeypatch.setattr(cifar, "BlockNet", blocknet)
    monkeypatch.setattr(Engine, "fit", fit)
    return WatchedSplits(splits, watch), watch


def test_model_sees_test_images_only_after_training_and_each_once(watched, tmp_path):
    splits, watch = watched
    # EMA on: validation and test then go through the averaged copy, the harder route to watch.
    recipe = cifar.resolve_recipe("quick", None, {
        "train": {"epochs": 2, "batch_size": 50, "lr": 0.2, "ema": 0.9, "device": "cpu", "progress": False},
        "model": {"width_multiplier": 0.125}, "data": {"root": "synthetic"}})
    row = cifar.train_block("A", recipe, splits, tmp_path / "A", log=lambda message: None)

    assert watch.images["fit"] >= 2 * (500 + 100)  # the hook saw training and validation
    assert watch.seen["before"] == [] and watch.seen["fit"] == []
    assert sorted(watch.seen["after"]) == list(range(100))
    assert set(watch.split_reads) == {"after"}
    assert 0.0 <= row["test_acc"] <= 1.0

    watch.reset()
    watch.phase = "before"
    again = cifar.train_block("A", recipe, splits, tmp_path / "A", log=lambda message: None)
    assert again == row
    assert watch.seen == {"before": [], "fit": [], "after": []} and watch.split_reads == []
