"""What a trained face model is shown: any image a user holds (a file path, the bytes of an
upload, a PIL image, a uint8 array) turned into the square uint8 face the model was trained on.

Decoding follows training's decoder (`cnnlab.data.images.open_rgb`: EXIF orientation, any mode
to RGB), and the face step is read from the saved model, never chosen by the caller: the
centre crop and resize of `FacePreprocess`, or its landmark alignment (`AlignedFace`, kind
"mtcnn-align"). A step registers itself in `FACE_PREPROCESSING` under its kind, the model
stores `extra["preprocess"] = {"kind": ...}`, and `embed`, the index fingerprint and the
service's crops all follow.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnlab.core.errors import CnnlabError
from cnnlab.core.registry import Registry
from cnnlab.data.align import DetectorSpec, NoFaceDetected
from cnnlab.data.faces import ALIGN_KIND, FacePreprocess
from cnnlab.data.images import TooManyPixels, UnreadableImage, open_rgb, to_rgb8

# 40 megapixels: a large phone photo passes, a decompression bomb does not.
DEFAULT_MAX_PIXELS = 40_000_000

ImageInput = str | Path | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray


class ImageRejected(CnnlabError):
    """An image that cannot be used; `status` is the HTTP status the service answers with."""
    status = 422


class ImageTooLarge(ImageRejected):
    status = 413


class NoFaceFound(ImageRejected):
    """Raised by a preprocessing step that looks for a face (alignment) and finds none."""
    status = 422


class FaceTooSmall(NoFaceFound):
    """An image smaller than the smallest face either face step uses (`MIN_FACE_SIDE`)."""


# The aligned step's detector searches no face smaller than this (MTCNN's `min_face`), so an
# image below it holds no face to find there; the centre crop refuses it too, rather than
# blowing up a thumbnail (a 1x1 image) into a "face" with an answer that looks like any other.
MIN_FACE_SIDE = DetectorSpec.min_face


class FacePreprocessing(Protocol):
    """What a model's face step offers: the output side, a spec that identifies it (part of
    the model fingerprint) and the step itself, PIL RGB in, `size` x `size` RGB out."""
    size: int

    def spec(self) -> dict: ...

    def __call__(self, image: Image.Image) -> Image.Image: ...


FACE_PREPROCESSING = Registry("face preprocessing")


@FACE_PREPROCESSING.register("centre-crop", aliases=("center-crop",))
@dataclass(frozen=True)
class CentreCrop:
    """The training decoder's centre crop (source pixels, clamped to the shorter side) and
    square resize. It looks for no face; it only refuses an image too small to hold one
    (`FaceTooSmall`, the aligned step's minimum)."""
    crop: int | None
    size: int

    def __post_init__(self):
        FacePreprocess(crop=self.crop, size=self.size)  # one place validates the values

    def spec(self) -> dict:
        return {"kind": "centre-crop", **FacePreprocess(crop=self.crop, size=self.size).cache_spec()}

    def __call__(self, image: Image.Image) -> Image.Image:
        if min(image.size) < MIN_FACE_SIDE:
            raise FaceTooSmall(f"no face found in the image: it is {image.width} x {image.height} pixels, below "
                               f"the {MIN_FACE_SIDE} px a face needs on its shorter side")
        return FacePreprocess(crop=self.crop, size=self.size).transform(image)


@FACE_PREPROCESSING.register(ALIGN_KIND)
@dataclass(frozen=True)
class AlignedFace:
    """Training's aligned face step (`FacePreprocess(align=True)`): MTCNN's 5 landmarks warped
    onto the template. A photo without a detectable face raises `NoFaceFound`: training's
    centre-crop fallback keeps benchmark pairs scoreable, but a user's photo without a face
    gets an answer saying so, not a guess."""
    size: int
    padding: float = 0.25
    crop: int | None = 150
    min_face: int = DetectorSpec.min_face
    max_side: int = DetectorSpec.max_side
    min_score: float = DetectorSpec.min_score

    def __post_init__(self):
        self.step()  # validates the values once, at load time

    def step(self) -> FacePreprocess:
        return FacePreprocess(crop=self.crop, size=self.size, align=True, padding=self.padding, fallback=False,
                              detector=DetectorSpec(min_face=self.min_face, max_side=self.max_side,
                                                    min_score=self.min_score))

    def spec(self) -> dict:
        return {"kind": ALIGN_KIND, **self.step().cache_spec()}

    def __call__(self, image: Image.Image) -> Image.Image:
        try:
            return self.step().transform(image)
        except NoFaceDetected:
            raise NoFaceFound("no face found in the image") from None


def preprocessing_from_extra(extra: dict, source: str | Path = "model") -> FacePreprocessing:
    """The face step a model.pt was trained with: `extra["preprocess"]` (`{"kind": name, ...}`)
    when the model names one, else the centre crop from its `crop` and `input_size`."""
    if "preprocess" in extra:
        options = dict(extra["preprocess"])
        kind = options.pop("kind", None)
        try:
            return FACE_PREPROCESSING.create(kind, **options)
        except (KeyError, TypeError, ValueError) as exc:
            raise CnnlabError(f"{source}: cannot rebuild its face preprocessing {extra['preprocess']}: "
                              f"{exc.args[0] if exc.args else exc}") from None
    missing = [key for key in ("crop", "input_size") if key not in extra]
    if missing:
        raise CnnlabError(f"{source} lacks the preprocessing it was trained with ({', '.join(missing)}); "
                          "use a model.pt written by `cnnlab faces train`")
    return CentreCrop(crop=extra["crop"], size=int(extra["input_size"]))


def _describe(image: Any) -> str:
    if isinstance(image, (str, Path)):
        return str(image)
    return f"<{type(image).__name__}>"


def to_rgb(image: ImageInput, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A PIL RGB image from a path, encoded bytes (or a binary file object), a PIL image or a
    uint8 array (H x W grey, H x W x 3 RGB or H x W x 4 RGBA). Bad input raises `ImageRejected` (or `ImageTooLarge`)
    naming it; nothing is decoded beyond `max_pixels`."""
    if isinstance(image, Image.Image):
        # An image the caller opened goes through what the decoder does after opening: EXIF
        # orientation (a phone photo opened with Pillow is stored sideways) and 8-bit scaling
        # of 16-bit and float modes, so it embeds as the same file given as a path would.
        _check_pixels(image, image.size, max_pixels)
        try:
            return to_rgb8(ImageOps.exif_transpose(image))
        except UnreadableImage as exc:
            raise ImageRejected(f"image could not be used ({exc})") from None
    if isinstance(image, np.ndarray):
        return _from_array(image, max_pixels)
    if hasattr(image, "read"):  # an open binary file; its `name` names it in errors
        name = str(getattr(image, "name", "upload"))
        data = image.read()
        if not isinstance(data, bytes):
            raise ImageRejected(f"{name} is not opened in binary mode")
        image = data
    else:
        name = "upload"
    if isinstance(image, (bytes, bytearray, memoryview)):
        if len(image) == 0:
            raise ImageRejected(f"{name} is empty: no image data")
        return _decode(io.BytesIO(bytes(image)), name, max_pixels)
    if isinstance(image, (str, Path)):
        if Path(image).is_dir():
            raise ImageRejected(f"{image} is a folder, not an image")
        if not Path(image).is_file():
            raise ImageRejected(f"image not found: {image}")
        return _decode(image, str(image), max_pixels)
    raise ImageRejected(f"not an image: expected a path, bytes, a binary file, a PIL image or a uint8 array, "
                        f"got {type(image).__name__}")


def _check_pixels(image: Any, size: tuple[int, int], max_pixels: int | None) -> Any:
    if max_pixels is not None and size[0] * size[1] > max_pixels:
        raise ImageTooLarge(f"image of {size[0]} x {size[1]} pixels exceeds the limit of {max_pixels:,} pixels")
    return image


def _decode(source: Any, name: str, max_pixels: int | None) -> Image.Image:
    """Training's decoder (`open_rgb`: file checks, EXIF orientation, 8-bit RGB) on a path or
    an in-memory upload, opened once; the header's size is checked before pixels are decoded."""
    try:
        return open_rgb(source, max_pixels=max_pixels)
    except TooManyPixels as exc:
        raise ImageTooLarge(f"{name}: {exc}") from None
    except UnidentifiedImageError:
        raise ImageRejected(f"{name} is not an image format Pillow can read") from None
    except Exception as exc:  # truncated or corrupt pixel data behind a valid header, bad paths
        reason = str(exc) if isinstance(exc, UnreadableImage) else f"{type(exc).__name__}: {exc}"
        raise ImageRejected(f"{name} could not be decoded ({reason})") from None


def _from_array(array: np.ndarray, max_pixels: int | None) -> Image.Image:
    if array.dtype != np.uint8:
        raise ImageRejected(f"image arrays must be uint8 (0-255), got {array.dtype}")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1):
        array = np.repeat(array.reshape(array.shape[0], array.shape[1], 1), 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or min(array.shape[:2]) < 1:
        raise ImageRejected(f"image arrays must be H x W, H x W x 3 or H x W x 4, got shape {array.shape}")
    _check_pixels(None, (array.shape[1], array.shape[0]), max_pixels)
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def is_batch(images: Any) -> bool:
    """A list/tuple, or a 4-D array, is a batch; anything else is one image."""
    return isinstance(images, (list, tuple)) or (isinstance(images, np.ndarray) and images.ndim == 4)


def prepare_faces(images: Sequence[ImageInput], face: FacePreprocessing, *,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """N x S x S x 3 uint8 faces, each decoded and passed through the model's face step."""
    out = np.empty((len(images), face.size, face.size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        try:
            rgb = face(to_rgb(image, max_pixels=max_pixels))
        except NoFaceFound as exc:
            if not isinstance(image, (str, Path)):
                raise  # an upload or an array: the caller knows which one it sent
            raise NoFaceFound(f"{image}: {exc}") from None
        arr = np.asarray(rgb, dtype=np.uint8)
        if arr.shape != out.shape[1:]:
            raise ImageRejected(f"{_describe(image)}: face step gave shape {arr.shape}, expected {out.shape[1:]}")
        out[i] = arr
    return out
