"""`FaceVerifier`: the Python API over a trained face model (a tiny Lite0 trained here on
synthetic identities). Verification is symmetric, an image matches itself, the saved threshold
and preprocessing are the ones used, every input type embeds alike, every runtime agrees."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.core.errors import CnnlabError
from cnnlab.data.faces import FacePreprocess
from cnnlab.data.images import decode_images
from cnnlab.verifier import (
    FACE_PREPROCESSING,
    FaceVerifier,
    ImageRejected,
    ImageTooLarge,
    NoFaceFound,
    model_fingerprint,
)
from face_models import SIDE, build_tiny_model, make_gallery, train_tiny_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("verifier")
    model_pt = train_tiny_model(root)
    gallery = make_gallery(root / "gallery", people=3, per_person=2)
    return model_pt, gallery


@pytest.fixture(scope="module")
def verifier(trained):
    return FaceVerifier.load(trained[0].parent, device="cpu")  # a run directory means its model.pt


def images(gallery):
    return sorted(gallery.glob("*/*.png"))


def test_verify_is_symmetric_and_uses_the_saved_threshold(trained, verifier):
    model_pt, gallery = trained
    saved = torch.load(model_pt, weights_only=True)["extra"]["threshold"]
    a, b = images(gallery)[0], images(gallery)[-1]
    ab, ba = verifier.verify(a, b), verifier.verify(b, a)
    assert ab.distance == pytest.approx(ba.distance, abs=1e-6) and ab.same == ba.same
    assert ab.threshold == saved == verifier.threshold
    assert ab.same == (ab.distance <= saved)
    assert verifier.verify(a, b, threshold=0.0).same is False
    assert verifier.distance(a, b) == pytest.approx(ab.distance, abs=1e-6)
    za, zb = verifier.embed(a), verifier.embed(b)
    assert verifier.distance(za, zb) == pytest.approx(ab.distance, abs=1e-6)  # embeddings work too


def test_an_image_against_itself_is_the_same_person_at_distance_zero(trained, verifier):
    a = images(trained[1])[2]
    result = verifier.verify(a, a)
    assert result.same and result.distance < 1e-3
    assert result.faces[0].shape == (32, 32, 3) and np.array_equal(result.faces[0], result.faces[1])


def test_every_input_type_embeds_alike_and_shapes_follow_the_input(trained, verifier):
    path = images(trained[1])[0]
    data = path.read_bytes()
    pil = Image.open(path)
    array = np.asarray(pil.convert("RGB"))
    with open(path, "rb") as opened:
        batch = verifier.embed([path, str(path), data, pil, array, opened])
    assert batch.shape == (6, verifier.embedding_dim) and batch.dtype == np.float32
    np.testing.assert_allclose(batch, np.repeat(batch[:1], 6, axis=0), atol=1e-6)
    single = verifier.embed(path)
    assert single.shape == (verifier.embedding_dim,)
    np.testing.assert_allclose(single, batch[0], atol=1e-5)
    assert verifier.embed(np.stack([array, array])).shape == (2, verifier.embedding_dim)  # a 4-D array is a batch
    assert verifier.embed([]).shape == (0, verifier.embedding_dim)
    grey = np.asarray(pil.convert("L"))
    assert verifier.embed(grey).shape == (verifier.embedding_dim,)


def test_preprocessing_is_the_models_own(trained, verifier):
    """What `prepare` feeds the network is what training decoded from the same file."""
    extra = torch.load(trained[0], weights_only=True)["extra"]
    path = images(trained[1])[1]
    spec = FacePreprocess(crop=extra["crop"], size=extra["input_size"])
    expected = decode_images([str(path)], spec.transform, (spec.size, spec.size), strict=True)[0]  # training's decoder
    assert np.array_equal(verifier.prepare(path), expected)
    assert verifier.face.spec()["crop"] == SIDE and verifier.input_size == extra["input_size"] == 32


def test_runtimes_agree(trained, verifier):
    paths = images(trained[1])
    reference = FaceVerifier.load(trained[0], device="cpu", runtime="torch").embed(paths)
    assert verifier.runtime.name == "onnxruntime"  # the benchmark's winner is the CPU default
    np.testing.assert_allclose(verifier.embed(paths), reference, atol=1e-4)
    channels_last = FaceVerifier.load(trained[0], device="cpu", runtime="torch-channels-last", batch_size=2)
    np.testing.assert_allclose(channels_last.embed(paths), reference, atol=1e-4)
    with pytest.raises(CnnlabError, match="unknown runtime"):
        FaceVerifier.load(trained[0], device="cpu", runtime="tensorrt")


def test_bad_images_are_refused_with_their_reason(trained, verifier, tmp_path):
    with pytest.raises(ImageRejected, match="not found"):
        verifier.embed(tmp_path / "missing.jpg")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ImageRejected):
        verifier.embed(text)
    with pytest.raises(ImageRejected, match="not an image format"):
        verifier.embed(b"plain text, no pixels")
    with pytest.raises(ImageRejected, match="uint8"):
        verifier.embed(np.zeros((40, 40, 3), np.float32))
    big = io.BytesIO()
    Image.new("RGB", (3000, 3000)).save(big, format="PNG")
    small = FaceVerifier.load(trained[0], device="cpu", runtime="torch", max_pixels=1_000_000)
    with pytest.raises(ImageTooLarge, match="3000 x 3000 pixels exceeds the limit of 1,000,000"):
        small.embed(big.getvalue())
    path = tmp_path / "big.png"
    path.write_bytes(big.getvalue())
    with pytest.raises(ImageTooLarge, match="3000 x 3000 pixels"):
        small.embed(path)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(big.getvalue()[:2000])
    with pytest.raises(ImageRejected, match="truncated.png could not be decoded"):
        verifier.embed(truncated)


def test_a_path_is_opened_once_and_decoded_like_training(monkeypatch, tmp_path):
    """The header check and the decode share one open (no second read of the file), and the
    pixels are the training decoder's."""
    from cnnlab.data.images import open_rgb
    from cnnlab.verifier.images import to_rgb
    path = tmp_path / "face.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(path)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(fp) or real_open(fp, *a, **k))
    image = to_rgb(path)
    assert len(opened) == 1
    assert np.array_equal(np.asarray(image), np.asarray(open_rgb(path)))
    assert np.array_equal(np.asarray(to_rgb(path.read_bytes())), np.asarray(image))


def test_a_run_directory_without_a_model_and_a_model_without_threshold(tmp_path):
    with pytest.raises(CnnlabError, match="holds no model.pt"):
        FaceVerifier.load(tmp_path, device="cpu")
    model = build_tiny_model(tmp_path / "m.pt", threshold=None)
    verifier = FaceVerifier.load(model, device="cpu", runtime="torch")
    with pytest.raises(CnnlabError, match="no calibrated threshold"):
        verifier.verify(np.zeros((48, 48, 3), np.uint8), np.zeros((48, 48, 3), np.uint8))
    assert verifier.verify(np.zeros((48, 48, 3), np.uint8), np.zeros((48, 48, 3), np.uint8), threshold=0.1).same


def test_fingerprint_changes_with_weights_and_preprocessing(tmp_path):
    a = FaceVerifier.load(build_tiny_model(tmp_path / "a.pt", seed=0), device="cpu", runtime="torch")
    again = FaceVerifier.load(tmp_path / "a.pt", device="cpu", runtime="torch")
    other = FaceVerifier.load(build_tiny_model(tmp_path / "b.pt", seed=1), device="cpu", runtime="torch")
    crop = FaceVerifier.load(build_tiny_model(tmp_path / "c.pt", seed=0, crop=40), device="cpu", runtime="torch")
    assert a.fingerprint == again.fingerprint == model_fingerprint(a.model, a.face)
    assert len({a.fingerprint, other.fingerprint, crop.fingerprint}) == 3


class _Mirror:
    """A stand-in for a face aligner: registered by kind, named in the model's extra."""

    def __init__(self, size: int, refuse: bool = False):
        self.size, self.refuse = size, refuse

    def spec(self) -> dict:
        return {"kind": "test-mirror", "size": self.size, "refuse": self.refuse}

    def __call__(self, image):
        if self.refuse:
            raise NoFaceFound("no face found in the image")
        return image.resize((self.size, self.size)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)


if "test-mirror" not in FACE_PREPROCESSING:
    FACE_PREPROCESSING.register("test-mirror")(_Mirror)


def test_a_registered_face_step_named_by_the_model_replaces_the_centre_crop(tmp_path):
    model = build_tiny_model(tmp_path / "aligned.pt", preprocess={"kind": "test-mirror", "size": 32})
    verifier = FaceVerifier.load(model, device="cpu", runtime="torch")
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    assert np.array_equal(verifier.prepare(image)[0], image[:, ::-1])
    plain = FaceVerifier.load(build_tiny_model(tmp_path / "plain.pt"), device="cpu", runtime="torch")
    assert plain.fingerprint != verifier.fingerprint  # same weights, other preprocessing
    refusing = FaceVerifier.load(build_tiny_model(tmp_path / "refuse.pt", preprocess={
        "kind": "test-mirror", "size": 32, "refuse": True}), device="cpu", runtime="torch")
    with pytest.raises(NoFaceFound):
        refusing.embed(image)
    with pytest.raises(CnnlabError, match="cannot rebuild its face preprocessing"):
        FaceVerifier.load(build_tiny_model(tmp_path / "bad.pt", preprocess={"kind": "nope"}), device="cpu")


def test_a_pil_image_goes_through_the_decoder_like_its_path(verifier, tmp_path):
    """EXIF orientation and 16-bit scaling apply to an image the caller opened with Pillow, as
    they do to the same file given as a path (a phone photo is stored sideways + a tag)."""
    from cnnlab.verifier import to_rgb
    rng = np.random.default_rng(0)
    upright = Image.fromarray(rng.integers(0, 255, (60, 40, 3), dtype=np.uint8))
    sideways = upright.transpose(Image.Transpose.ROTATE_90)  # stored rotated; EXIF says turn it back
    exif = Image.Exif()
    exif[0x0112] = 8  # orientation: rotate 90 CW to display
    path = tmp_path / "phone.jpg"
    sideways.save(path, exif=exif, quality=95)
    with Image.open(path) as opened:
        from_pil = np.asarray(to_rgb(opened))
    from_path = np.asarray(to_rgb(path))
    assert from_pil.shape == from_path.shape == (60, 40, 3)
    np.testing.assert_array_equal(from_pil, from_path)
    np.testing.assert_allclose(verifier.embed(Image.open(path)), verifier.embed(path), atol=1e-6)
    deep = Image.fromarray(np.full((8, 8), 65535, np.uint16))  # 16-bit white
    assert np.asarray(to_rgb(deep)).min() == 255  # scaled to 8 bits, not clipped garbage


def test_a_folder_given_as_an_image_says_so(verifier, tmp_path):
    with pytest.raises(ImageRejected, match=f"^{tmp_path} is a folder, not an image$"):
        verifier.embed(tmp_path)


def test_the_pixel_limit_message_names_the_file(trained, tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (1200, 1000)).save(path)
    small = FaceVerifier.load(trained[0], device="cpu", runtime="torch", max_pixels=1_000_000)
    with pytest.raises(ImageTooLarge, match=f"^{path}: image of 1200 x 1000 pixels exceeds the limit of 1,000,000"):
        small.embed(path)
