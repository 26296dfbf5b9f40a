"""Photometric and small geometric augmentation of uint8 H x W x 3 face images, for photos unlike
LFW's: soft low-resolution crops upscaled (CelebA's 89 x 109, AT&T's 92 x 112), greyscale
(AT&T), other cameras, light and compression (photos in the wild).

The transforms are the usual ones of face recognition training (colour jitter, greyscale and
blur as in SimCLR, Chen et al. 2020; the low-resolution and JPEG degradations of real-world
super-resolution, Wang et al. 2021, Real-ESRGAN), each a pure function of the image and its
parameters, so each can be tested alone. `augment_image` draws which of them apply and their
parameters from a NumPy generator; `augment_views` makes K seeded views per image.

It runs in NumPy and PIL, once per image, when the frozen-feature cache of the CPU recipe is
built (`cnnlab.tasks.faces.features`): Python work per image is acceptable there, never in a
training step.
"""
from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

# ITU-R BT.601 luma, the weights of PIL's convert("L") and torchvision's rgb_to_grayscale.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class AugmentSettings:
    """Each transform applies with its probability, independently of the others, in the order
    of the fields: pose and framing first, then the colours of the scene and camera, then the
    optics and resolution of the source, JPEG last (the last thing that happens to a photo
    before it is shared)."""
    # Small enough that an aligned face stays aligned: the 5-point warp leaves ~±10 deg of roll.
    affine_p: float = 0.5
    max_degrees: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    jitter_p: float = 0.8
    brightness: float = 0.3       # factor drawn in [1 - b, 1 + b], as torchvision's ColorJitter
    contrast: float = 0.3
    saturation: float = 0.3
    grey_p: float = 0.2
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    # 0.35-0.7 of 192 px is 67-134 px: about the face size of CelebA's and AT&T's photos.
    downscale_p: float = 0.3
    downscale: tuple[float, float] = (0.35, 0.7)
    jpeg_p: float = 0.3
    jpeg_quality: tuple[int, int] = (30, 80)

    def __post_init__(self):
        probabilities = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.endswith("_p")}
        ranges = {"scale": self.scale, "blur_sigma": self.blur_sigma, "downscale": self.downscale,
                  "jpeg_quality": self.jpeg_quality}
        checks = [(0 <= p <= 1, f"{name} must be in [0, 1], got {p}") for name, p in probabilities.items()]
        checks += [(len(r) == 2 and 0 < r[0] <= r[1], f"{name} must be (low, high) with 0 < low <= high, got {r}")
                   for name, r in ranges.items()]
        checks += [
            (0 <= self.max_degrees <= 45, f"max_degrees must be in [0, 45], got {self.max_degrees}"),
            (all(0 <= v < 1 for v in (self.brightness, self.contrast, self.saturation)),
             "brightness, contrast and saturation must be in [0, 1)"),
            (self.downscale[1] <= 1, f"downscale factors must be <= 1, got {self.downscale}"),
            (self.jpeg_quality[1] <= 95, f"jpeg_quality must be <= 95, got {self.jpeg_quality}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def spec(self) -> dict:
        """Every setting, for the key of what was computed from the views."""
        return dataclasses.asdict(self)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _grey(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) @ LUMA


# ---------------------------------------------------------------------------- the transforms
def rotate_scale(image: np.ndarray, degrees: float, scale: float) -> np.ndarray:
    """Rotated by `degrees` counter-clockwise and scaled by `scale` about the centre, bilinear;
    the corners that would come from outside the photo are its reflection, never black (a
    black wedge is a cue no real photo has)."""
    h, w = image.shape[:2]
    # Far enough that every output pixel's source lies inside the reflected border.
    pad = math.ceil(math.hypot(h, w) / (2 * scale) - min(h, w) / 2) + 2
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    # PIL maps output to input; rounded to 15 digits as Image.rotate does, so 90 deg is exact.
    phi = -math.radians(degrees)
    cos, sin = round(math.cos(phi), 15) / scale, round(math.sin(phi), 15) / scale
    a, b, d, e = cos, sin, -sin, cos
    cx, cy = w / 2, h / 2
    data = (a, b, pad + cx - a * cx - b * cy, d, e, pad + cy - d * cx - e * cy)
    out = Image.fromarray(padded).transform((w, h), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)
    return np.asarray(out)


def adjust_colour(image: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """torchvision's ColorJitter factors, in that fixed order: brightness scales the pixels,
    contrast blends with the mean grey level, saturation with the image's own greyscale (1: no
    change, 0: the grey level / the greyscale image)."""
    x = image.astype(np.float32) * brightness
    x = np.clip(x, 0, 255)
    mean = float((x @ LUMA).mean())
    x = (x - mean) * contrast + mean
    x = np.clip(x, 0, 255)
    grey = (x @ LUMA)[..., None]
    return _to_uint8((x - grey) * saturation + grey)


def to_greyscale(image: np.ndarray) -> np.ndarray:
    """BT.601 luma in all three channels: the network keeps its three-channel input."""
    return np.repeat(_to_uint8(_grey(image))[..., None], 3, axis=2)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """PIL's Gaussian blur of standard deviation `sigma` pixels (an out-of-focus or soft photo)."""
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=sigma)))


def downscale_upscale(image: np.ndarray, factor: float) -> np.ndarray:
    """Resized to `factor` of its side and back, bicubic both ways (PIL antialiases the
    reduction): the detail a low-resolution source never had is gone, as in CelebA's crops
    upscaled to the network's input."""
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((max(1, round(w * factor)), max(1, round(h * factor))),
                                          Image.Resampling.BICUBIC)
    return np.asarray(small.resize((w, h), Image.Resampling.BICUBIC))


def jpeg_reencode(image: np.ndarray, quality: int) -> np.ndarray:
    """Encoded as JPEG at `quality` (PIL's default 4:2:0 chroma subsampling, as most photos on
    the web) and decoded again: its blocks and colour bleeding."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


# ---------------------------------------------------------------------------- random views
def _check_images(images: np.ndarray, ndim: int) -> None:
    if images.dtype != np.uint8 or images.ndim != ndim or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape {'N x ' if ndim == 4 else ''}H x W x 3, "
                         f"got {images.dtype} {images.shape}")


def augment_image(image: np.ndarray, rng: np.random.Generator, settings: AugmentSettings | None = None
                  ) -> np.ndarray:
    """One random view of a uint8 H x W x 3 image: same shape and dtype. Every draw is made
    whether or not its transform applies, so changing one probability leaves the other
    transforms' parameters of each view as they were."""
    _check_images(image, 3)
    s = settings or AugmentSettings()
    apply = rng.random(6) < [s.affine_p, s.jitter_p, s.grey_p, s.blur_p, s.downscale_p, s.jpeg_p]
    degrees = rng.uniform(-s.max_degrees, s.max_degrees)
    scale = rng.uniform(*s.scale)
    colour = rng.uniform([1 - s.brightness, 1 - s.contrast, 1 - s.saturation],
                         [1 + s.brightness, 1 + s.contrast, 1 + s.saturation])
    sigma = rng.uniform(*s.blur_sigma)
    factor = rng.uniform(*s.downscale)
    quality = int(rng.integers(s.jpeg_quality[0], s.jpeg_quality[1] + 1))
    x = np.ascontiguousarray(image)
    if apply[0]:
        x = rotate_scale(x, degrees, scale)
    if apply[1]:
        x = adjust_colour(x, *colour)
    if apply[2]:
        x = to_greyscale(x)
    if apply[3]:
        x = gaussian_blur(x, sigma)
    if apply[4]:
        x = downscale_upscale(x, factor)
    if apply[5]:
        x = jpeg_reencode(x, quality)
    return np.ascontiguousarray(x)


def augment_views(images: np.ndarray, k: int, seed: int, *, ids: np.ndarray | None = None,
                  settings: AugmentSettings | None = None) -> np.ndarray:
    """`k` random views of each of N uint8 images, as an (N, k, H, W, 3) uint8 array. The
    original is not among them, and view 0 is not special: every view is an independent draw of
    `augment_image`. View v of an image comes from its own generator, seeded by (seed, the
    image's id, v), so it is the same whatever other images are augmented with it, in whatever
    batches, and the first views of k = 4 are those of k = 2. `ids` (default 0..N-1, must be >=
    0): what identifies each image, e.g. its row in a data set."""
    _check_images(images, 4)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    ids = np.arange(len(images)) if ids is None else np.asarray(ids, dtype=np.int64)
    if len(ids) != len(images) or (len(ids) and ids.min() < 0):
        raise ValueError(f"ids must be {len(images)} non-negative integers")
    out = np.empty((len(images), k, *images.shape[1:]), np.uint8)
    for n, (image, image_id) in enumerate(zip(images, ids)):
        for v in range(k):
            out[n, v] = augment_image(image, np.random.default_rng([seed, int(image_id), v]), settings)
    return out
