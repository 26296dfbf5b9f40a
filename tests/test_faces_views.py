"""Augmented views of the frozen-feature cache (`augment_views`, `cnnlab.tasks.faces.features`):
without views the cache entry and every batch are the plain frozen features; with K views each
training row gets K seeded augmented versions, validation rows none, and each step draws one of
the 1 + K versions per image from the epoch's generator. Tiny random-init Lite0 at 32 px."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab.core.errors import CnnlabError
from cnnlab.data.augment import AugmentSettings, augment_views
from cnnlab.data.faces import FaceDataset
from cnnlab.models.siamese import SiameseNet
from cnnlab.tasks.faces import cache_stage, cached_prefix
from cnnlab.tasks.faces.features import VIEWS_SEED, PrefixFeatures, prefix_key, views_key
from cnnlab.tasks.faces.task import FaceVerificationTask
from test_faces_train import quiet, tiny_config

CPU = torch.device("cpu")


def five_people(tmp_path) -> FaceDataset:
    images = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    return FaceDataset(images, np.repeat(np.arange(5), 2), list("abcde"), [f"{k}.jpg" for k in range(10)], tmp_path)


def cache_entries(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache").iterdir())


@pytest.fixture
def model_and_data(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    config = tiny_config(batch_size=4, k=2, val_pairs=2)
    model = SiameseNet.from_config(config.model_config()).eval()
    stage = len(model.backbone_stages()) - config.trainable_stages
    return config, model, stage, five_people(tmp_path)


def test_without_views_the_cache_entry_and_the_batches_are_the_plain_frozen_features(model_and_data, tmp_path):
    config, model, stage, dataset = model_and_data
    rows, fit, val = np.arange(10), np.arange(6), np.arange(6, 10)
    prefix = cached_prefix(model, dataset, rows, stage, batch_size=4, progress=False, log=quiet, views=0,
                           view_rows=fit)
    # One entry, under the key and with the one array runs without views have always read.
    assert cache_entries(tmp_path) == [f"faces-prefix-{prefix_key(model, stage, dataset, rows)}.npz"]
    with np.load(tmp_path / "cache" / cache_entries(tmp_path)[0]) as data:
        assert data.files == ["features"]
    assert prefix.num_views == 0 and prefix.views is None
    task = FaceVerificationTask(config, dataset, fit, val, CPU, prefix=prefix, start_stage=stage)
    # Each batch by hand: the epoch's generator draws one flip per image, nothing else, and the
    # batch holds the frozen stages' output of those (mirrored) images.
    epoch = 2
    reference = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    with torch.no_grad():
        for batch, local in zip(task.train_batches(epoch), task.sampler.batches(epoch), strict=True):
            drawn = fit[local.numpy()]
            flipped = torch.rand(len(drawn), generator=reference) < 0.5
            x = torch.from_numpy(dataset.images[drawn]).permute(0, 3, 1, 2)
            x = torch.where(flipped[:, None, None, None], x.flip(3), x)
            torch.testing.assert_close(batch.inputs, model.features_until(x, stage), rtol=1e-4, atol=1e-5)
            # The pairs are drawn next from the same stream: it is where it was without views.
            assert torch.equal(torch.rand(3, generator=batch.pair_generator), torch.rand(3, generator=reference))


def test_views_are_the_frozen_features_of_seeded_augmented_training_images_only(model_and_data, tmp_path):
    config, model, stage, dataset = model_and_data
    rows, fit = np.arange(10), np.arange(6)
    prefix = cached_prefix(model, dataset, rows, stage, batch_size=4, progress=False, log=quiet, views=2,
                           view_rows=fit)
    assert prefix.num_views == 2 and prefix.views.dtype == torch.float16
    assert prefix.views.shape == (6, 2, 2, *prefix.features.shape[2:])  # training row, view, flip
    assert prefix.features.shape == (10, 2, *prefix.features.shape[2:]) and prefix.features.dtype == torch.float32
    pixels = augment_views(dataset.images[fit], 2, VIEWS_SEED, ids=fit)
    every = torch.as_tensor(fit)
    with torch.no_grad():
        for v in (1, 2):
            x = torch.from_numpy(pixels[:, v - 1]).permute(0, 3, 1, 2)
            for flip in (False, True):
                got = prefix.gather(every, torch.full((6,), flip), torch.full((6,), v))
                assert got.dtype == torch.float32
                torch.testing.assert_close(got, model.features_until(x.flip(3) if flip else x, stage),
                                           rtol=2e-3, atol=2e-3)  # stored in float16
        # View 0 is the original, exactly as without views; one call mixes versions per row.
        assert torch.equal(prefix.gather(every, None, torch.zeros(6, dtype=torch.int64)), prefix.gather(every))
        mixed = prefix.gather(torch.tensor([0, 1]), torch.tensor([False, True]), torch.tensor([2, 0]))
        assert torch.equal(mixed[0], prefix.views[0, 1, 0].float()) and torch.equal(mixed[1], prefix.features[1, 1])
    # Validation rows were cached without views: their original only.
    assert torch.equal(prefix.gather(torch.tensor([7]), None, torch.tensor([0])), prefix.features[7:8, 0])
    with pytest.raises(ValueError, match="without them"):
        prefix.gather(torch.tensor([7]), None, torch.tensor([1]))
    # Another K: another views entry beside the same originals' entry, which is not recomputed.
    cached_prefix(model, dataset, rows, stage, batch_size=4, progress=False, log=quiet, views=3, view_rows=fit)
    names = cache_entries(tmp_path)
    assert sum(n.startswith("faces-prefix-views-") for n in names) == 2 and len(names) == 3


def test_the_views_key_changes_with_k_the_rows_and_every_setting():
    rows = np.arange(6)
    key = views_key("k0", rows, 2, AugmentSettings())
    assert key == views_key("k0", rows.copy(), 2, AugmentSettings())
    others = [views_key("k1", rows, 2, AugmentSettings()), views_key("k0", rows, 4, AugmentSettings()),
              views_key("k0", rows[:5], 2, AugmentSettings()), views_key("k0", rows, 2, AugmentSettings(grey_p=0.5)),
              views_key("k0", rows, 2, AugmentSettings(jpeg_quality=(40, 80))),
              views_key("k0", rows, 2, AugmentSettings(), seed=1)]
    assert len({key, *others}) == 1 + len(others)


def encoded_task(tmp_path, seed: int = 0, views: int = 2, augment_views: int | None = None
                 ) -> FaceVerificationTask:
    """A task on 8 people x 2 images whose cached features say what was gathered: row + 20 flip +
    40 view (exact in float16); the last two people validate."""
    n, train = 16, np.arange(12)
    dataset = FaceDataset(np.zeros((n, 32, 32, 3), np.uint8), np.repeat(np.arange(8), 2), list("abcdefgh"),
                          [f"{k}.jpg" for k in range(n)], tmp_path)
    flip = torch.tensor([0.0, 20.0])[None, :]
    features = (torch.arange(n, dtype=torch.float32)[:, None] + flip).view(n, 2, 1, 1, 1)
    versions = (torch.arange(len(train), dtype=torch.float32)[:, None, None] + flip[:, None]
                + 40 * torch.arange(1, views + 1, dtype=torch.float32)[None, :, None])
    prefix = PrefixFeatures(features, np.arange(n), n, 2, views=versions.view(len(train), views, 2, 1, 1, 1).half(),
                            view_rows=train)
    config = tiny_config(batch_size=4, k=2, val_pairs=2, seed=seed,
                         augment_views=views if augment_views is None else augment_views)
    return FaceVerificationTask(config, dataset, train, np.arange(12, 16), CPU, prefix=prefix, start_stage=2)


def drawn(task: FaceVerificationTask, epochs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, flip, view) of every image of the first `epochs` epochs' batches."""
    codes, rows = [], []
    for epoch in range(epochs):
        for batch, local in zip(task.train_batches(epoch), task.sampler.batches(epoch), strict=True):
            codes.append(batch.inputs.flatten().numpy().astype(int))
            rows.append(task.train_rows[local].numpy())
    code, row = np.concatenate(codes), np.concatenate(rows)
    assert (code % 20 == row).all()  # each image's own features
    return row, code // 20 % 2, code // 40


def test_each_step_draws_the_original_or_a_view_uniformly_and_a_flip_by_seed(tmp_path):
    task = encoded_task(tmp_path)
    _, flip, view = drawn(task, 40)  # 40 epochs x 12 images
    assert set(flip) == {0, 1} and set(view) == {0, 1, 2}
    # 480 draws: 4 standard deviations of a share of 1/3 (0.0215) or 1/2 (0.0228)
    assert np.all(np.abs(np.bincount(view) / len(view) - 1 / 3) < 0.086)
    assert abs(flip.mean() - 0.5) < 0.092
    again, other = drawn(encoded_task(tmp_path), 3), drawn(encoded_task(tmp_path, seed=1), 3)
    first = drawn(task, 3)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[2], other[2])


def test_views_are_refused_where_training_starts_from_pixels_or_the_cache_disagrees(tmp_path):
    with pytest.raises(ValueError, match="augment_views must be >= 0"):
        tiny_config(augment_views=-1)
    for pixels in ({"cache_frozen_features": "off"}, {"shift": 2}):
        with pytest.raises(ValueError, match="augment_views=2 augments cached frozen features"):
            tiny_config(augment_views=2, **pixels)
    with pytest.raises(CnnlabError, match="augment_views=2 needs the cached-feature path"):
        cache_stage(tiny_config(trainable_stages=-1, augment_views=2), 9)
    assert cache_stage(tiny_config(trainable_stages=2, augment_views=2), 9) == 7
    with pytest.raises(ValueError, match="augment_views=0 but the cached features hold 2"):
        encoded_task(tmp_path, views=2, augment_views=0)
