"""The augmentation of uint8 face images (`cnnlab.data.augment`): each transform alone against a
property computed by hand, then the seeded random views."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cnnlab.data.augment import (
    AugmentSettings,
    adjust_colour,
    augment_image,
    augment_views,
    downscale_upscale,
    gaussian_blur,
    jpeg_reencode,
    rotate_scale,
    to_greyscale,
)

NOTHING = AugmentSettings(affine_p=0, jitter_p=0, grey_p=0, blur_p=0, downscale_p=0, jpeg_p=0)


def noise(shape=(24, 20, 3), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def checkerboard(side: int = 32) -> np.ndarray:
    """Pixels alternating 0 / 255: all of its contrast is at the highest frequency an image holds."""
    y, x = np.indices((side, side))
    return np.repeat(((x + y) % 2 * 255).astype(np.uint8)[..., None], 3, axis=2)


def smooth(side: int = 48) -> np.ndarray:
    """Slow gradients, one per channel: little above the lowest frequencies."""
    y, x = np.indices((side, side)) / (side - 1)
    return (np.stack([x, y, (x + y) / 2], axis=2) * 200 + 20).astype(np.uint8)


def test_rotation_by_zero_at_scale_one_is_the_identity_and_by_90_degrees_is_rot90():
    for image in (noise(), noise((7, 5, 3))):
        np.testing.assert_array_equal(rotate_scale(image, 0, 1), image)
    square = noise((16, 16, 3))
    np.testing.assert_array_equal(rotate_scale(square, 90, 1), np.rot90(square))      # counter-clockwise
    np.testing.assert_array_equal(rotate_scale(square, -90, 1), np.rot90(square, -1))


def test_scale_moves_each_column_towards_or_away_from_the_centre():
    # A ramp whose value is 4 x (column): output column x samples the input at
    # c + (x + 0.5 - c) / s - 0.5 (pixel centres; c = W / 2), where the ramp is 4 times that
    # (PIL's 8-bit bilinear truncates: within one level).
    w, h = 40, 10
    ramp = np.repeat((4 * np.tile(np.arange(w), (h, 1))).astype(np.uint8)[..., None], 3, axis=2)
    for s in (0.9, 1.1):
        out = rotate_scale(ramp, 0, s).astype(float)
        x = np.arange(4, w - 4)  # away from the reflected border
        expected = 4 * (w / 2 + (x + 0.5 - w / 2) / s - 0.5)
        np.testing.assert_allclose(out[h // 2, 4:w - 4, 0], expected, atol=1)


def test_rotation_and_zoom_out_leave_no_black_corners():
    flat = np.full((30, 20, 3), 200, np.uint8)
    for degrees, scale in ((10, 0.9), (-10, 0.9), (45, 0.5)):
        np.testing.assert_array_equal(rotate_scale(flat, degrees, scale), flat)  # the border is reflected photo


def test_colour_factors_of_one_change_nothing_and_each_factor_is_torchvisions():
    image = noise()
    np.testing.assert_array_equal(adjust_colour(image, 1, 1, 1), image)
    pixels = np.array([[[100, 100, 100], [200, 200, 200]]], np.uint8)
    np.testing.assert_array_equal(adjust_colour(pixels, 1.5, 1, 1), [[[150] * 3, [255] * 3]])  # clipped at 255
    # Contrast 0: every pixel the mean grey level (150); saturation 0: the pixel's own luma.
    np.testing.assert_array_equal(adjust_colour(pixels, 1, 0, 1), np.full((1, 2, 3), 150))
    red = np.array([[[255, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(adjust_colour(red, 1, 1, 0), [[[76, 76, 76]]])  # 0.299 x 255 = 76.2


def test_greyscale_is_bt601_luma_in_all_three_channels():
    out = to_greyscale(np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8))
    assert out.shape == (1, 4, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    # 0.299 x 255 = 76.2, 0.587 x 255 = 149.7, 0.114 x 255 = 29.1, 2.99 + 11.74 + 3.42 = 18.15
    np.testing.assert_array_equal(out[0, :, 0], [76, 150, 29, 18])


@pytest.mark.parametrize("degrade", [lambda x: gaussian_blur(x, 1.0), lambda x: downscale_upscale(x, 0.5)])
def test_blur_and_low_resolution_remove_the_highest_frequencies_and_keep_flat_images(degrade):
    board = checkerboard()
    out = degrade(board).astype(float)[4:-4, 4:-4]  # away from the borders
    # The checkerboard's spread is 127.5 around 127.5: what is left of it is near flat grey.
    assert out.std() < 0.1 * board.std() and abs(out.mean() - 127.5) < 3
    flat = np.full((32, 32, 3), 90, np.uint8)
    np.testing.assert_array_equal(degrade(flat), flat)
    # A smooth image has almost nothing at those frequencies: it barely changes.
    assert np.abs(degrade(smooth()).astype(float) - smooth())[4:-4, 4:-4].mean() < 1.5


def test_downscale_by_one_is_the_identity():
    image = noise()
    np.testing.assert_array_equal(downscale_upscale(image, 1.0), image)


def test_jpeg_changes_the_pixels_a_little_and_less_at_higher_quality():
    image = smooth()
    image[10:20, 10:30] = [200, 40, 40]  # an edge and a saturated colour: what JPEG blurs
    errors = {q: np.abs(jpeg_reencode(image, q).astype(float) - image).mean() for q in (30, 80)}
    assert 0 < errors[80] < errors[30] < 8


def test_a_view_keeps_shape_and_dtype_and_depends_only_on_its_generator():
    image = noise((30, 22, 3))
    everything = AugmentSettings(affine_p=1, jitter_p=1, grey_p=1, blur_p=1, downscale_p=1, jpeg_p=1)
    for settings in (None, everything):
        a = augment_image(image, np.random.default_rng(5), settings)
        assert a.shape == image.shape and a.dtype == np.uint8
        np.testing.assert_array_equal(a, augment_image(image, np.random.default_rng(5), settings))
        assert not np.array_equal(a, augment_image(image, np.random.default_rng(6), settings))
    np.testing.assert_array_equal(augment_image(image, np.random.default_rng(5), NOTHING), image)
    grey = augment_image(image, np.random.default_rng(5), dataclasses.replace(NOTHING, grey_p=1))
    np.testing.assert_array_equal(grey, to_greyscale(image))
    with pytest.raises(ValueError, match="uint8"):
        augment_image(image.astype(np.float32), np.random.default_rng(0))


def test_views_are_seeded_per_image_and_view_and_none_is_the_original():
    images = noise((5, 24, 20, 3))
    views = augment_views(images, 3, seed=7)
    assert views.shape == (5, 3, 24, 20, 3) and views.dtype == np.uint8
    np.testing.assert_array_equal(views, augment_views(images, 3, seed=7))
    assert not np.array_equal(views, augment_views(images, 3, seed=8))
    # The views of an image do not depend on the images beside it or on k: a row's views
    # are the same whichever batch of the cache computes them.
    np.testing.assert_array_equal(augment_views(images[3:], 2, seed=7, ids=np.arange(3, 5)), views[3:, :2])
    # View 0 is a random view like the others, not the original (with the colours always
    # jittered, no view can be the original by chance).
    jittered = augment_views(images, 3, seed=7, settings=dataclasses.replace(AugmentSettings(), jitter_p=1))
    assert all(not np.array_equal(jittered[n, v], images[n]) for n in range(5) for v in range(3))
    assert not np.array_equal(views[:, 0], views[:, 1])
    np.testing.assert_array_equal(augment_views(images, 2, seed=7, settings=NOTHING),
                                  np.repeat(images[:, None], 2, axis=1))
    assert augment_views(images, 0, seed=7).shape == (5, 0, 24, 20, 3)


def test_each_transform_applies_at_its_probability():
    image = noise((16, 16, 3))
    settings = dataclasses.replace(NOTHING, grey_p=0.3)
    grey = [np.array_equal(v, to_greyscale(image)) for v in augment_views(image[None], 400, seed=0,
                                                                          settings=settings)[0]]
    assert 0.24 < np.mean(grey) < 0.36  # 400 draws: 3 standard deviations of 0.023


def test_settings_are_checked():
    for bad in ({"grey_p": 1.5}, {"scale": (1.1, 0.9)}, {"downscale": (0.5, 1.5)}, {"jpeg_quality": (0, 80)},
                {"brightness": 1.0}, {"max_degrees": 90}):
        with pytest.raises(ValueError):
            AugmentSettings(**bad)
    assert AugmentSettings().spec()["jpeg_quality"] == (30, 80)
