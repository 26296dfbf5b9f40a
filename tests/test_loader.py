import numpy as np
import pytest
import torch

from cnnlab.data.cifar import synthetic_cifar
from cnnlab.data.loader import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    AugmentConfig,
    DeviceLoader,
    cutout,
    normalize,
    random_crop,
    random_flip,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def data():
    return synthetic_cifar(300, 20, val_size=20, seed=0)


def _batches(loader, epoch=None):
    if epoch is not None:
        loader.set_epoch(epoch)
    return [(x.cpu(), y.cpu()) for x, y in loader]


def _gen(seed=0, device="cpu"):
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


@pytest.mark.parametrize("device", DEVICES)
def test_shapes_dtypes_and_layout(data, device):
    loader = DeviceLoader(data.train_images, data.train_labels, 64, device=device)
    assert loader.num_samples == 280 and len(loader) == 5
    assert loader.images.dtype == torch.uint8 and loader.images.shape == (280, 3, 32, 32)
    assert loader.images.device.type == device
    batches = list(loader)
    assert [len(y) for _, y in batches] == [64, 64, 64, 64, 24]
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (64, 3, 32, 32) and x.device.type == device
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert y.dtype == torch.int64 and y.device.type == device
    flat = DeviceLoader(data.train_images, data.train_labels, 64, channels_last=False)
    assert next(iter(flat))[0].is_contiguous()
    assert len(DeviceLoader(data.train_images, data.train_labels, 64, drop_last=True)) == 4


def test_normalisation_matches_the_formula(data):
    loader = DeviceLoader(data.train_images, data.train_labels, 100)
    x, y = next(iter(loader))
    expected = (data.train_images[:100].astype(np.float64) / 255 - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD)
    assert np.allclose(x.permute(0, 2, 3, 1).numpy(), expected, atol=1e-5)
    assert torch.equal(y, torch.from_numpy(data.train_labels[:100]))
    # With the split's own statistics the normalised data has per-channel mean 0 and std 1.
    pixels = data.train_images.reshape(-1, 3) / 255.0
    own = DeviceLoader(data.train_images, data.train_labels, 1000,
                       mean=tuple(pixels.mean(0)), std=tuple(pixels.std(0)))
    x = next(iter(own))[0]
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=1e-3)


def test_normalize_function_equals_the_formula():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    expected = ((x.double() / 255 - torch.tensor(mean).double().view(1, 3, 1, 1))
                / torch.tensor(std).double().view(1, 3, 1, 1))
    assert torch.allclose(normalize(x, mean, std).double(), expected, atol=1e-5)


def test_augmentation_keeps_labels_and_changes_pixels(data):
    plain = DeviceLoader(data.train_images, data.train_labels, 64, shuffle=True, seed=1)
    augmented = DeviceLoader(data.train_images, data.train_labels, 64, shuffle=True, seed=1,
                             augment=AugmentConfig(crop_padding=4, flip=True, cutout=8))
    for (xp, yp), (xa, ya) in zip(_batches(plain, 2), _batches(augmented, 2)):
        assert torch.equal(yp, ya)
        changed = (xp != xa).flatten(1).any(1).float().mean()
        assert changed > 0.9


def test_identity_settings_change_nothing(data):
    plain = DeviceLoader(data.train_images, data.train_labels, 64, shuffle=True, seed=1)
    off = DeviceLoader(data.train_images, data.train_labels, 64, shuffle=True, seed=1,
                       augment=AugmentConfig(crop_padding=0, flip=False, cutout=0))
    for (xp, yp), (xo, yo) in zip(_batches(plain, 0), _batches(off, 0)):
        assert torch.equal(xp, xo) and torch.equal(yp, yo)
    x = torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8)
    assert torch.equal(random_crop(x, 0, _gen()), x)
    assert torch.equal(cutout(x, 0, _gen()), x)


def test_random_crop_is_a_shifted_window_of_the_zero_padded_image():
    x = torch.randint(1, 256, (32, 3, 8, 8), dtype=torch.uint8)
    out = random_crop(x, 2, _gen(3))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(len(x)):
        matches = [(top, left) for top in range(5) for left in range(5)
                   if torch.equal(padded[i, :, top:top + 8, left:left + 8], out[i])]
        assert matches, f"image {i} is not a crop of its padded source"
        offsets.add(matches[0])
    assert len(offsets) > 5  # offsets vary per image, not one shift for the batch


def test_random_flip_mirrors_about_half_the_images():
    x = torch.randint(0, 256, (400, 3, 4, 4), dtype=torch.uint8)
    out = random_flip(x, _gen(0))
    flipped = torch.tensor([torch.equal(o, s.flip(2)) and not torch.equal(o, s) for o, s in zip(out, x)])
    kept = torch.tensor([torch.equal(o, s) for o, s in zip(out, x)])
    assert bool((flipped | kept).all())
    assert 150 < int(flipped.sum()) < 250
    assert torch.equal(random_flip(x, _gen(0), p=1.0), x.flip(3))


def test_cutout_fills_one_clipped_square_per_image():
    x = torch.ones(200, 3, 16, 16)
    out = cutout(x, 6, _gen(0), fill=0.0)
    holes = out[:, 0] == 0
    assert torch.equal(holes, (out == 0).all(1))  # same square in every channel
    for hole in holes:
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= 6 and 1 <= len(cols) <= 6
        assert int(hole.sum()) == len(rows) * len(cols)  # a rectangle, not scattered pixels
    sizes = holes.flatten(1).sum(1)
    assert int(sizes.max()) == 36 and int(sizes.min()) < 36  # whole squares and border-clipped ones


def test_same_seed_and_epoch_give_identical_batches(data):
    cfg = AugmentConfig(cutout=4)

    def make(seed):
        return DeviceLoader(data.train_images, data.train_labels, 50, shuffle=True, augment=cfg, seed=seed)
    a, b = make(7), make(7)
    for (xa, ya), (xb, yb) in zip(_batches(a, 3), _batches(b, 3)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    order = lambda batches: torch.cat([y for _, y in batches])  # noqa: E731
    ids = torch.arange(280)
    a_ids = DeviceLoader(data.train_images, ids, 50, shuffle=True, seed=7)
    e3, e4 = order(_batches(a_ids, 3)), order(_batches(a_ids, 4))
    assert not torch.equal(e3, e4)
    assert not torch.equal(e3, order(_batches(DeviceLoader(data.train_images, ids, 50, shuffle=True, seed=8), 3)))
    # Without set_epoch each pass advances the epoch, so a plain loop still reshuffles.
    fresh = DeviceLoader(data.train_images, ids, 50, shuffle=True, seed=7)
    first, second = order(_batches(fresh)), order(_batches(fresh))
    assert not torch.equal(first, second) and torch.equal(first, order(_batches(fresh, 0)))


def test_every_sample_appears_once_per_epoch(data):
    ids = torch.arange(280)
    loader = DeviceLoader(data.train_images, ids, 32, shuffle=True, seed=0, augment=AugmentConfig())
    for epoch in range(2):
        seen = torch.cat([y for _, y in _batches(loader, epoch)])
        assert torch.equal(seen.sort().values, ids)
    dropped = DeviceLoader(data.train_images, ids, 32, shuffle=True, drop_last=True)
    seen = torch.cat([y for _, y in _batches(dropped, 0)])
    assert len(seen) == 256 and len(set(seen.tolist())) == 256


def test_bad_arguments_are_rejected(data):
    with pytest.raises(ValueError, match="crop_padding"):
        AugmentConfig(crop_padding=-1)
    with pytest.raises(ValueError, match="uint8"):
        DeviceLoader(data.train_images.astype(np.float32), data.train_labels, 8)
    with pytest.raises(ValueError, match="labels"):
        DeviceLoader(data.train_images, data.train_labels[:-1], 8)
    with pytest.raises(ValueError, match="mean/std"):
        DeviceLoader(data.train_images, data.train_labels, 8, mean=(0.5,), std=(0.5,))
