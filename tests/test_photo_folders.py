"""Photos as people keep them: albums at any depth under a person's folder, HEIC (and AVIF) files,
non-images and images without a face among them. Every command that reads a folder (`index
build`, `index add`, `search --gallery`, `score`, `calibrate`) uses every image under each
person, never makes a person of an album, and accounts for every file: used, no face found,
unreadable or not an image, adding up to the files seen. A HEIC photo gives the distance the
same picture saved as PNG gives, from the CLI, the index and the service."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image, features

from cnnlab.cli import main
from cnnlab.data.faces import FacePreprocess
from cnnlab.data.images import open_rgb, walk_files
from cnnlab.verifier import FACE_PREPROCESSING, FaceVerifier, GalleryIndex, NoFaceFound, build_index, scan_gallery
from face_models import build_tiny_model
from test_faces_train import person_image, person_pattern

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _BlankHasNoFace:
    """A stand-in for an aligning face step: a one-colour image holds no face (`NoFaceFound`),
    anything else is centre-cropped as the default step does."""

    def __init__(self, size: int):
        self.size = size

    def spec(self) -> dict:
        return {"kind": "test-blank-has-no-face", "size": self.size}

    def __call__(self, image):
        if np.ptp(np.asarray(image)) == 0:
            raise NoFaceFound("no face found in the image")
        return FacePreprocess(crop=None, size=self.size).transform(image)


if "test-blank-has-no-face" not in FACE_PREPROCESSING:
    FACE_PREPROCESSING.register("test-blank-has-no-face")(_BlankHasNoFace)

# The tree below: 15 files seen (hidden ones are not), of every kind.
USED_IN_INDEX = {"Ann/1.png", "Ann/2.png", "Ann/trip 2020/3.png", "Ann/trip 2020/day1/4.heic", "Bob/1.png",
                 "Bob/album/2.heic", "Cy/2.png", "Cy/a/b/c/1.png", "loose.png"}
NO_FACE = {"Bob/album/blank.png"}
UNREADABLE = {"Bob/album/broken.jpg"}
NOT_IMAGES = {"Ann/trip 2020/day1/notes.txt", "Bob/IMG_0002.MOV", "Cy/a/info.json", "README"}


def _face(rng, pattern) -> Image.Image:
    return Image.fromarray(person_image(pattern, rng))


def make_photo_tree(root):
    """People with albums (`Ann/trip 2020/day1/...`), HEIC photos, a faceless image, a damaged
    file, non-images, hidden files and an image directly in the folder."""
    rng = np.random.default_rng(7)
    patterns = {name: person_pattern(rng) for name in ("Ann", "Bob", "Cy", "loose")}
    for rel in sorted(USED_IN_INDEX):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _face(rng, patterns[rel.split("/")[0].removesuffix(".png")]).save(path, quality=95)
    Image.new("RGB", (48, 48), (90, 90, 90)).save(root / "Bob/album/blank.png")  # decodes; holds no face
    (root / "Bob/album/broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    for rel in NOT_IMAGES:
        (root / rel).write_text("not a picture")
    (root / "Ann/.hidden").mkdir()
    _face(rng, patterns["Ann"]).save(root / "Ann/.hidden/5.png")      # hidden: not looked at
    (root / "Bob/.DS_Store").write_bytes(b"\0\0")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    model = build_tiny_model(root / "model.pt", preprocess={"kind": "test-blank-has-no-face", "size": 32})
    photos = make_photo_tree(root / "my photos")
    return model, photos, root


@pytest.fixture(scope="module")
def verifier(setup):
    return FaceVerifier.load(setup[0], device="cpu", runtime="torch")


def _rel(photos, paths) -> set[str]:
    return {os.path.relpath(p, photos).replace(os.sep, "/") for p in paths}


def _left_out(photos, entries, kind) -> set[str]:
    return _rel(photos, [e["path"] for e in entries if e["kind"] == kind])


def test_heic_is_really_written_and_decoded(setup):
    _, photos, _ = setup
    heic = photos / "Bob/album/2.heic"
    assert heic.read_bytes()[4:12] == b"ftypheic"
    assert open_rgb(heic).size == (48, 48)


def test_the_scan_lists_every_file_at_any_depth_and_albums_name_no_one(setup):
    _, photos, _ = setup
    scan = scan_gallery(photos)
    assert {f.name for f in scan.images} == USED_IN_INDEX | NO_FACE | UNREADABLE
    assert {f.person for f in scan.images} == {"Ann", "Bob", "Cy", None}
    assert next(f for f in scan.images if f.name == "Ann/trip 2020/day1/4.heic").person == "Ann"
    assert _rel(photos, [x.path for x in scan.left_out]) == NOT_IMAGES and scan.seen == 15
    named = scan_gallery(photos / "Bob", person="Robert")
    assert {f.person for f in named.images} == {"Robert"} and len(named.images) == 4


def test_walk_files_skips_hidden_files_and_ends_a_link_loop(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.jpg").write_bytes(b"")
    (tmp_path / "a" / ".hidden.jpg").write_bytes(b"")
    (tmp_path / "a" / "b" / "up").symlink_to(tmp_path / "a")   # a loop back to an ancestor
    files, unlisted = walk_files(tmp_path)
    assert files == [tmp_path / "a" / "b" / "x.jpg"] and unlisted == []


def test_index_build_uses_every_image_at_any_depth_and_counts_every_file(setup, capsys):
    model, photos, root = setup
    out = root / "index-cli"
    assert main(["faces", "index", "build", str(photos), "--model", str(model), "--out", str(out),
                 "--runtime", "torch", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert ("15 files: 9 used (9 added, 0 updated, 0 already indexed), 1 no face found, 1 unreadable, "
            "4 not an image; 9 images in the index") in text
    skipped = [line for line in text.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 5 and "... and 1 more left out (all 6 in the --json output)" in text
    # The images the model could not use come first, each with its own reason.
    assert skipped[0].endswith("blank.png: no face found in the image") and "broken.jpg" in skipped[1]
    assert "no face" not in skipped[1] and all("not an image" in line for line in skipped[2:])
    index = GalleryIndex.open(out)
    assert set(index.names) == USED_IN_INDEX
    assert set(index.people) == {"Ann", "Bob", "Cy", None}       # no album became a person
    assert index.people[index.names.index("Cy/a/b/c/1.png")] == "Cy"
    # Run again with --json: every file left out, with its kind; nothing to embed.
    assert main(["faces", "index", "add", str(out), str(photos), "--json", "--runtime", "torch", "--no-progress"]) == 0
    again = json.loads(capsys.readouterr().out)
    files = again["files"]
    assert (again["unchanged"], again["added"], files["used"], files["seen"]) == (9, 0, 9, 15)
    assert files["used"] + files["no_face"] + files["unreadable"] + files["not_image"] == files["seen"]
    assert _left_out(photos, files["left_out"], "no_face") == NO_FACE
    assert _left_out(photos, files["left_out"], "unreadable") == UNREADABLE
    assert _left_out(photos, files["left_out"], "not_image") == NOT_IMAGES
    broken = next(e for e in files["left_out"] if e["path"].endswith("broken.jpg"))
    assert "no face" not in broken["reason"]


def test_person_names_everything_under_the_folder_given(setup, verifier, capsys):
    model, photos, root = setup
    out = root / "index-people"
    build_index(verifier, photos / "Ann", out, person="Ann", progress=False)
    assert main(["faces", "index", "add", str(out), str(photos / "Bob"), "--person", "Robert", "--json",
                 "--runtime", "torch", "--no-progress"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["added"] == 2 and counts["files"]["seen"] == 5
    assert [counts["files"][k] for k in ("used", "no_face", "unreadable", "not_image")] == [2, 1, 1, 1]
    index = GalleryIndex.open(out)
    assert sorted(index.people) == ["Ann"] * 4 + ["Robert"] * 2   # no "album", no "trip 2020"


def test_score_and_calibrate_use_every_image_under_each_person(setup, capsys, tmp_path):
    model, photos, _ = setup
    assert main(["faces", "score", str(photos), "--model", str(model), "--runtime", "torch", "--json",
                 "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    files = result["files"]
    assert (result["images"], result["people"], result["pairs"]["matched"]) == (8, 3, 6 + 1 + 1)  # Ann 4, Bob 2, Cy 2
    assert files == {"seen": 15, "used": 8, "no_face": 1, "unreadable": 1, "not_image": 4, "no_person": 1}
    assert sum(v for k, v in files.items() if k != "seen") == files["seen"] == files["used"] + len(result["skipped"])
    assert _left_out(photos, result["skipped"], "no_person") == {"loose.png"}
    assert _left_out(photos, result["skipped"], "no_face") == NO_FACE
    out = tmp_path / "calibrated.pt"
    assert main(["faces", "calibrate", str(model), str(photos), "--out", str(out), "--objective", "accuracy",
                 "--runtime", "torch", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert ("15 files: 8 used, 1 no face found, 1 unreadable, 4 not an image, 1 in no person's folder"
            in text) and "8 images of 3 people" in text
    calibration = torch.load(out, weights_only=True)["extra"]["calibration"]
    assert calibration["files"] == files and calibration["images"] == 8   # counts only: no paths in the model


def test_search_gallery_counts_every_file_and_shows_progress_per_image(setup, capsys, monkeypatch):
    model, photos, _ = setup
    monkeypatch.setenv("CNNLAB_PROGRESS_INTERVAL", "0")   # a log: a plain line at each step
    assert main(["faces", "search", str(model), "--gallery", str(photos), "--query", str(photos / "Ann/1.png"),
                 "-k", "3", "--runtime", "torch", "--json"]) == 0
    captured = capsys.readouterr()
    answer = json.loads(captured.out)
    files = answer["gallery_files"]
    assert (files["seen"], files["used"], files["no_face"], files["unreadable"], files["not_image"]) == (15, 9, 1, 1, 4)
    assert answer["results"][0]["matches"][0]["name"] == "Ann/1.png"
    progress = [line for line in captured.err.splitlines() if line.startswith("embed gallery: ")]
    assert [line.split()[2] for line in progress[:3]] == ["1/11", "2/11", "3/11"]   # moves on every image
    assert "15 files: 9 used" in captured.err


# ---------------------------------------------------------------------------------------- HEIC
@pytest.fixture(scope="module")
def heic_and_png(setup):
    """A face photo saved as HEIC, and the same picture (the HEIC's decoded pixels) as PNG."""
    _, _, root = setup
    rng = np.random.default_rng(3)
    original = person_image(person_pattern(rng), rng)
    folder = root / "heic-pair"
    (folder / "heic").mkdir(parents=True)
    (folder / "png").mkdir()
    heic = folder / "heic" / "face.HEIC"
    Image.fromarray(original).save(heic, format="HEIF", quality=90)
    decoded = np.asarray(open_rgb(heic))
    assert np.abs(decoded.astype(int) - original).mean() < 8     # the picture, not noise
    png = folder / "png" / "face.png"
    Image.fromarray(decoded).save(png)
    return heic, png


def test_verify_and_search_give_a_heic_photo_the_distance_of_its_png(setup, heic_and_png, capsys):
    model, photos, root = setup
    heic, png = heic_and_png
    other = photos / "Ann" / "1.png"
    distances = []
    for image in (heic, png):
        assert main(["faces", "verify", str(model), str(image), str(other), "--json", "--runtime", "torch"]) == 0
        distances.append(json.loads(capsys.readouterr().out)["distance"])
    assert distances[0] == pytest.approx(distances[1], abs=1e-5)
    index = root / "index-search"
    build_index(FaceVerifier.load(model, device="cpu", runtime="torch"), photos, index, progress=False)
    matches = []
    for image in (heic, png):
        assert main(["faces", "search", str(index), str(image), "-k", "9", "--json", "--runtime", "torch"]) == 0
        matches.append(json.loads(capsys.readouterr().out)["results"][0]["matches"])
    assert [m["name"] for m in matches[0]] == [m["name"] for m in matches[1]]
    np.testing.assert_allclose([m["distance"] for m in matches[0]], [m["distance"] for m in matches[1]], atol=1e-5)


def test_index_add_embeds_a_heic_photo_as_its_png(setup, verifier, heic_and_png, capsys):
    _, photos, root = setup
    heic, png = heic_and_png
    index_dir = root / "index-heic"
    build_index(verifier, photos / "Cy", index_dir, person="Cy", progress=False)
    for folder, person in ((heic.parent, "heic"), (png.parent, "png")):
        assert main(["faces", "index", "add", str(index_dir), str(folder), "--person", person, "--runtime", "torch",
                     "--no-progress"]) == 0
        assert "1 added" in capsys.readouterr().out
    index = GalleryIndex.open(index_dir)
    query = photos / "Ann" / "1.png"
    found = {m.person: m.distance for m in verifier.identify(query, index, k=index.count)}
    assert found["heic"] == pytest.approx(found["png"], abs=1e-5)


def test_the_service_verifies_a_heic_upload_as_its_png(setup, verifier, heic_and_png):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from cnnlab.serve import create_app
    _, photos, _ = setup
    heic, png = heic_and_png
    other = (photos / "Ann" / "1.png").read_bytes()
    with TestClient(create_app(verifier)) as client:
        answers = [client.post("/verify", files={"image1": (path.name, path.read_bytes(), "image/heic"),
                                                 "image2": ("other.png", other, "image/png")})
                   for path in (heic, png)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json()["distance"] == pytest.approx(answers[1].json()["distance"], abs=1e-5)


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow build reads no AVIF")
def test_an_avif_photo_is_read_and_counted_as_an_image(tmp_path, verifier):
    rng = np.random.default_rng(5)
    for person in ("p", "q"):
        (tmp_path / person).mkdir()
        buffer = io.BytesIO()
        Image.fromarray(person_image(person_pattern(rng), rng)).save(buffer, format="AVIF", quality=90)
        (tmp_path / person / "1.avif").write_bytes(buffer.getvalue())
    scan = scan_gallery(tmp_path)
    assert len(scan.images) == 2 and not scan.left_out
    assert verifier.embed(tmp_path / "p" / "1.avif").shape == (16,)
