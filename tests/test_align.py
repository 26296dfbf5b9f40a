"""Face alignment: the similarity fit, the warp (synthetic images whose landmarks are known
exactly), MTCNN on real faces (AT&T, LFW: the aligned face's re-detected landmarks sit on the
template), faces not found (per-file report, fallback), and the face step a saved model
records being the one verify uses."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from cnnlab.data.align import (
    TEMPLATE_112,
    DetectorSpec,
    NoFaceDetected,
    choose_face,
    detect_cached,
    detector,
    similarity_transform,
    template,
    warp_face,
)
from cnnlab.data.faces import FacePreprocess, load_identity_folders
from cnnlab.data.images import BAD_FILES_NAME
from conftest import data_dir


def _similarity(angle_deg: float, scale: float, shift) -> np.ndarray:
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return np.hstack([scale * rot, np.asarray(shift, float)[:, None]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_similarity_fit_recovers_a_known_transform_exactly():
    truth = _similarity(23.0, 1.7, (-12.0, 40.5))
    src = TEMPLATE_112 + np.array([3.0, -2.0])
    fitted = similarity_transform(src, _apply(truth, src))
    np.testing.assert_allclose(fitted, truth, atol=1e-9)


def test_similarity_fit_never_reflects():
    src = TEMPLATE_112
    mirrored = src * np.array([-1.0, 1.0])  # the best fit would be a reflection
    fitted = similarity_transform(src, mirrored)
    assert np.linalg.det(fitted[:, :2]) > 0


def test_template_is_centred_and_scaled():
    pts = template(112, 0.0)
    np.testing.assert_allclose(pts, TEMPLATE_112)
    wide = template(112, 1.0)  # side 224 template units in 112 px: half the size, centred
    np.testing.assert_allclose(wide, (TEMPLATE_112 - 56) / 2 + 56)


def _dots_image(points: np.ndarray, size=(420, 420)) -> Image.Image:
    """Black image with a 3x3 white dot centred on each point (pixel-centre coordinates)."""
    img = np.zeros((size[1], size[0], 3), np.uint8)
    for x, y in points:
        cx, cy = int(round(x - 0.5)), int(round(y - 0.5))
        img[cy - 1:cy + 2, cx - 1:cx + 2] = 255
    return Image.fromarray(img)


def _dot_centres(warped: Image.Image, expected: np.ndarray) -> np.ndarray:
    """Brightness-weighted centre (pixel-centre coordinates) of the dot nearest each expected point."""
    a = np.asarray(warped.convert("L"), np.float64)
    ys, xs = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    out = []
    for ex, ey in expected:
        window = ((xs + 0.5 - ex) ** 2 + (ys + 0.5 - ey) ** 2) < 8 ** 2
        w = a * window
        out.append([(w * (xs + 0.5)).sum() / w.sum(), (w * (ys + 0.5)).sum() / w.sum()])
    return np.array(out)


@pytest.mark.parametrize("angle, scale, padding, size", [(0, 2.0, 0.25, 192), (-18, 2.6, 0.0, 112),
                                                         (31, 1.4, 0.5, 160)])
def test_warped_landmarks_land_on_the_template(angle, scale, padding, size):
    # A face of known landmarks: the template rotated, scaled and moved into a bigger picture.
    truth = _similarity(angle, scale, (70.0, 40.0))
    landmarks = _apply(truth, TEMPLATE_112)
    warped = warp_face(_dots_image(landmarks), landmarks, size, padding)
    assert warped.size == (size, size)
    target = template(size, padding)
    found = _dot_centres(warped, target)
    assert np.abs(found - target).max() < 1.0, (found, target)


def test_big_faces_are_shrunk_without_losing_the_landmarks():
    truth = _similarity(10, 9.0, (100.0, 80.0))  # eyes ~320 px apart, warped into 112 px
    landmarks = _apply(truth, TEMPLATE_112)
    warped = warp_face(_dots_image(landmarks, size=(1300, 1200)), landmarks, 112, 0.0)
    target = template(112, 0.0)
    assert np.abs(_dot_centres(warped, target) - target).max() < 1.5


def test_choose_face_prefers_large_and_central_faces():
    size = (200, 200)
    boxes = np.array([[0, 0, 60, 60], [70, 70, 130, 130], [80, 80, 120, 120], [10, 100, 190, 195]], float)
    scores = np.array([0.99, 0.99, 0.99, 0.5])
    assert choose_face(boxes, scores, size, min_score=0.9) == 1   # the big low-score face is ignored
    assert choose_face(boxes, scores, size, min_score=0.4) == 3
    assert choose_face(boxes, np.array([0.1, 0.2, 0.3, 0.4]), size, min_score=0.9) is None


def test_detector_settings_are_validated():
    with pytest.raises(ValueError, match="min_face"):
        DetectorSpec(min_face=5)
    with pytest.raises(ValueError, match="min_score"):
        DetectorSpec(min_score=2)


def _blank(tmp_path, name="blank.png"):
    path = tmp_path / name
    Image.fromarray(np.full((120, 100, 3), 128, np.uint8)).save(path)
    return path


def test_an_image_without_a_face_is_reported_not_a_crash(tmp_path):
    assert detector().detect([Image.open(_blank(tmp_path))]) == [None]
    with pytest.raises(NoFaceDetected):
        FacePreprocess(size=64, align=True, fallback=False).transform(Image.open(_blank(tmp_path)))
    centre = FacePreprocess(crop=None, size=64, align=True, fallback=True).transform(Image.open(_blank(tmp_path)))
    assert centre.size == (64, 64)


def _att_with_a_blank(tmp_path):
    """Two AT&T people plus a 'person' whose second image holds no face."""
    att = data_dir("att-faces")
    root = tmp_path / "faces"
    for person in ("s1", "s2"):
        (root / person).mkdir(parents=True)
        for n in (1, 2, 3):
            (root / person / f"{n}.pgm").write_bytes((att / person / f"{n}.pgm").read_bytes())
    (root / "s3").mkdir()
    (root / "s3" / "1.pgm").write_bytes((att / "s3" / "1.pgm").read_bytes())
    _blank(root / "s3", "2.png")
    return root


@pytest.mark.data
def test_no_face_files_are_skipped_or_centre_cropped_and_listed(tmp_path):
    root = _att_with_a_blank(tmp_path)
    skipped, report = load_identity_folders(root, FacePreprocess(size=64, align=True, fallback=False), progress=False)
    assert len(skipped) == 7 and report.bad == [(str(root / "s3" / "2.png"), "no face found")]
    kept, report = load_identity_folders(root, FacePreprocess(size=64, align=True, fallback=True), progress=False)
    assert len(kept) == 8 and not report.bad
    assert [p for p, _ in report.fallback] == [str(root / "s3" / "2.png")]
    assert report.write(tmp_path) == tmp_path / BAD_FILES_NAME  # listed even though nothing was skipped


@pytest.mark.data
@pytest.mark.slow
def test_real_faces_are_aligned_onto_the_template():
    """AT&T (92x112 grey, frontal) and LFW (250x250, in the wild). The warp moves each face's
    landmarks where the similarity fit says: MTCNN run again on the aligned crop finds them
    there, within its own jitter (a few px of 160). The fit itself cannot put all five points of
    a real face exactly on the template (faces differ in shape), only close to it."""
    att, lfw = data_dir("att-faces"), data_dir("lfw") / "lfw-deepfunneled"
    files = [att / "s1" / "1.pgm", att / "s7" / "4.pgm", att / "s23" / "9.pgm",
             lfw / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg", lfw / "Zico" / "Zico_0003.jpg"]
    size, padding = 160, 0.25
    spec = FacePreprocess(size=size, align=True, padding=padding, fallback=False)
    target = template(size, padding)
    warp_errors, fit_errors = [], []
    for f in files:
        image = Image.open(f).convert("RGB")
        landmarks = detector().detect([image])[0]
        moved = _apply(similarity_transform(landmarks, target), landmarks)
        again = detector().detect([spec.transform(image)])[0]
        assert again is not None, f"no face found in the aligned crop of {f}"
        warp_errors.append(float(np.abs(again - moved).max()))
        fit_errors.append(float(np.abs(moved - target).max()))
    assert max(warp_errors) < 4.0 and np.median(warp_errors) < 2.5, warp_errors
    assert max(fit_errors) < 12.0, fit_errors   # 12 px of 160: same template, different faces


@pytest.mark.data
def test_landmarks_are_detected_once_and_cached(tmp_path):
    att = data_dir("att-faces")
    paths = [str(att / "s5" / f"{n}.pgm") for n in range(1, 6)]
    first = detect_cached(paths, name="att-test")
    import cnnlab.data.align as align
    real = align.detector
    align.detector = lambda spec=None: (_ for _ in ()).throw(AssertionError("detector ran again"))
    try:
        again = detect_cached(paths, name="att-test")
    finally:
        align.detector = real
    np.testing.assert_array_equal(first, again)
    assert not np.isnan(first).any()


@pytest.mark.data
def test_the_face_step_a_model_records_is_the_one_verify_uses(tmp_path):
    """Training pixels (landmarks detected in a batch, cached) and verify's pixels (the model's
    recorded step, detecting on the single image) are the same face."""
    from cnnlab.verifier import AlignedFace, NoFaceFound, preprocessing_from_extra
    att = data_dir("att-faces")
    spec = FacePreprocess(crop=None, size=96, align=True, padding=0.25)
    dataset, _ = load_identity_folders(att, spec, people=["s4", "s9"], progress=False)
    face = preprocessing_from_extra(spec.model_extra(), "model.pt")
    assert isinstance(face, AlignedFace) and face.size == 96 and face.padding == 0.25
    for row in (0, 7, 15):
        path = dataset.root / dataset.paths[row]
        ours = np.asarray(face(Image.open(path).convert("RGB")), np.int16)
        diff = np.abs(ours - dataset.images[row].astype(np.int16))
        assert np.median(diff) <= 2 and diff.mean() < 4, (row, diff.mean())
    with pytest.raises(NoFaceFound):  # a user's photo without a face is refused, never centre-cropped
        face(Image.open(_blank(tmp_path)).convert("RGB"))
    assert FacePreprocess(size=96).model_extra() == {}  # the centre crop keeps its own keys


@pytest.mark.data
def test_index_and_score_skip_photos_without_a_face(tmp_path):
    """An aligned model's gallery index and folder scoring list a photo without a face as
    skipped ("no face found") and go on with the others."""
    from cnnlab.verifier import FaceVerifier, build_index, score_identity_folder
    from face_models import build_tiny_model
    root = _att_with_a_blank(tmp_path)
    extra = FacePreprocess(size=32, align=True).model_extra()
    verifier = FaceVerifier.load(build_tiny_model(tmp_path / "aligned.pt", **extra), device="cpu", runtime="torch")
    assert isinstance(verifier.face, __import__("cnnlab.verifier", fromlist=["AlignedFace"]).AlignedFace)
    report = score_identity_folder(verifier, root, progress=False)
    assert report["images"] == 7 and [s["path"] for s in report["skipped"]] == [str(root / "s3" / "2.png")]
    assert "no face found" in report["skipped"][0]["reason"]
    assert report["pairs"]["matched"] == 6    # s1: 3, s2: 3, s3: its one face makes no pair
    enrol = build_index(verifier, root, tmp_path / "index", progress=False)
    assert enrol.total == 7 and [p for p, _ in enrol.bad] == [str(root / "s3" / "2.png")]
    assert "no face found" in enrol.bad[0][1]


@pytest.mark.data
def test_verify_cli_refuses_a_photo_without_a_face_in_one_line(tmp_path, capsys):
    from cnnlab.cli import main
    from face_models import build_tiny_model
    att = data_dir("att-faces")
    model = build_tiny_model(tmp_path / "aligned.pt", **FacePreprocess(size=32, align=True).model_extra())
    assert main(["faces", "verify", str(model), str(att / "s1" / "1.pgm"), str(att / "s1" / "2.pgm")]) == 0
    capsys.readouterr()
    blank = _blank(tmp_path)
    assert main(["faces", "verify", str(model), str(att / "s1" / "1.pgm"), str(blank)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cnnlab: error: {blank}: no face found in the image"]


@pytest.mark.data
@pytest.mark.parametrize("side", [1, 32, 39])
def test_an_image_smaller_than_the_smallest_face_is_no_face_not_a_crash(tmp_path, capsys, side):
    """MTCNN searches faces from 40 px up; a smaller image (a 1x1 PNG, a 32x32 CIFAR picture, a
    39 px face) has no face to find: detection answers None, verify one line, exit 2."""
    from cnnlab.cli import main
    from cnnlab.data.align import detector
    from face_models import build_tiny_model
    att = data_dir("att-faces")
    small = Image.open(att / "s1" / "1.pgm").convert("RGB").resize((side, side))
    assert detector().detect([small, Image.open(att / "s1" / "2.pgm").convert("RGB")])[0] is None
    path = tmp_path / f"small{side}.png"
    small.save(path)
    model = build_tiny_model(tmp_path / "aligned.pt", **FacePreprocess(size=32, align=True).model_extra())
    assert main(["faces", "verify", str(model), str(att / "s1" / "1.pgm"), str(path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"cnnlab: error: {path}: no face found in the image"]


def test_detection_runs_with_one_torch_thread_and_restores_the_count():
    """Beside a busy process a two-thread pool made MTCNN 14x slower (BENCHMARKS.md): the
    detector runs with DETECT_THREADS and gives the process its thread count back."""
    import torch

    from cnnlab.data import align
    seen = []

    class FakeMTCNN:
        def detect(self, batch, landmarks=True):
            seen.append(torch.get_num_threads())
            return [None] * len(batch), [None] * len(batch), [None] * len(batch)

    det = align.FaceDetector()
    det._mtcnn = FakeMTCNN()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert det.detect([Image.new("RGB", (120, 120))] * 3) == [None] * 3
        assert seen == [align.DETECT_THREADS] and torch.get_num_threads() == 2
        with align.torch_threads(1), align.torch_threads(1):  # re-entrant (a detector inside a block)
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
