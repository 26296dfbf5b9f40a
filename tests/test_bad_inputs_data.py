"""Issue 11, rows 1-6: bad image files in CIFAR folders, face folders and `faces verify` go
through the one decoder (`cnnlab.data.images`): pixel modes are converted by what their values
mean, every unreadable file is named (a few on screen, all in the run folder's
bad_files.json), and problems that would break a run stop it before anything is written."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.cli import main
from cnnlab.core.errors import CnnlabError
from cnnlab.data.cifar import CIFAR10_CLASSES, load_cifar10
from cnnlab.data.faces import FacePreprocess, load_identity_folders
from cnnlab.data.images import BAD_FILES_NAME, decode_cached, decode_images, open_rgb
from cnnlab.data.lfw import LFWProtocol
from test_faces_train import SIDE, make_fake_lfw, quiet, tiny_config

CIFAR_TINY = ["--epochs", "1", "--batch-size", "20", "--lr", "0.1", "--width-multiplier", "0.125",
              "--val-size", "10", "--device", "cpu", "--no-progress"]


def grey_ramp(h: int = 24, w: int = 30) -> np.ndarray:
    """Every 8-bit level appears (0..255), so a scaling error anywhere shows."""
    return (np.arange(h * w).reshape(h, w) * 255 // (h * w - 1)).astype(np.uint8)


def save_16bit_copy(grey8: np.ndarray, path: Path) -> Path:
    """The 8-bit image as a 16-bit greyscale PNG (v * 257: the exact 16-bit equivalent)."""
    img = Image.fromarray(grey8.astype(np.uint16) * 257)
    assert img.mode == "I;16"
    img.save(path)
    with Image.open(path) as check:
        assert check.mode == "I;16"  # what the issue saw decode as all white
    return path


def only_one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def empty_or_absent(folder: Path) -> bool:
    return not folder.exists() or not any(folder.rglob("*"))


def self_loop(path: Path) -> Path:
    os.symlink(path.name, path)  # a link to itself: "Too many levels of symbolic links"
    return path


needs_symlinks = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX symlinks")


# ---------------------------------------------------------------------------- row 1: pixel modes

def test_16bit_png_decodes_to_the_8bit_pixels_not_white(tmp_path):
    grey = grey_ramp()
    Image.fromarray(grey).save(tmp_path / "eight.png")
    save_16bit_copy(grey, tmp_path / "sixteen.png")
    eight = np.asarray(open_rgb(tmp_path / "eight.png"))
    sixteen = np.asarray(open_rgb(tmp_path / "sixteen.png"))
    assert sixteen.shape == (24, 30, 3) and sixteen.dtype == np.uint8
    assert np.array_equal(sixteen, eight) and np.array_equal(sixteen[..., 0], grey)
    assert sixteen.min() == 0 and sixteen.max() == 255


def test_16bit_values_are_scaled_by_1_over_257_not_clipped(tmp_path):
    values = np.array([[0, 128, 257, 1000, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "levels.png")
    decoded = np.asarray(open_rgb(tmp_path / "levels.png"))[0, :, 0]
    assert decoded.tolist() == [0, 0, 1, 4, 128, 255]   # round(v / 257); clipping gave 255 from 257 up


def test_big_endian_16bit_and_16bit_pgm_decode_the_same(tmp_path):
    grey = grey_ramp()
    big = Image.frombytes("I;16B", (30, 24), (grey.astype(">u2") * 257).tobytes())
    big.save(tmp_path / "big.tif")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "deep.pgm")
    with Image.open(tmp_path / "deep.pgm") as img:
        assert img.mode == "I"                           # Pillow's 16-bit PGM: 0..65535 in mode I
    for name in ("big.tif", "deep.pgm"):
        assert np.array_equal(np.asarray(open_rgb(tmp_path / name))[..., 1], grey), name


def test_float_pixels_in_0_1_are_scaled_and_other_ranges_are_reported(tmp_path):
    grey = grey_ramp()
    Image.fromarray(grey.astype(np.float32) / 255).save(tmp_path / "unit.tif")
    Image.fromarray(grey.astype(np.float32)).save(tmp_path / "levels.tif")              # 0..255: scale unknown
    Image.fromarray(grey.astype(np.int32) * 1000).save(tmp_path / "wide.tif")           # beyond 16 bits
    images, ok, report = decode_images([tmp_path / n for n in ("unit.tif", "levels.tif", "wide.tif")],
                                       None, (24, 30))
    assert ok.tolist() == [0] and np.array_equal(images[0][..., 2], grey)
    reasons = dict((Path(p).name, r) for p, r in report.bad)
    assert "outside 0..1" in reasons["levels.tif"] and "bit depth unknown" in reasons["wide.tif"]


def test_transparency_is_flattened_onto_black_and_other_modes_convert(tmp_path):
    grey = np.full((4, 4), 200, np.uint8)
    alpha = np.array([[255, 128, 0, 255]] * 4, np.uint8)
    Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)]).save(tmp_path / "la.png")
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 255, 0, 10, 20, 250])
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "p.png", transparency=0)                  # index 0 (green) is transparent
    Image.new("1", (4, 4), 1).save(tmp_path / "bits.png")
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")
    la = np.asarray(open_rgb(tmp_path / "la.png")).astype(int)
    assert la[0, :, 0].tolist() == [200, 100, 0, 200]                 # 200 * alpha / 255, rounded
    p = np.asarray(open_rgb(tmp_path / "p.png"))
    assert p[0, 0].tolist() == [0, 0, 0] and p[1, 1].tolist() == [10, 20, 250]
    assert np.all(np.asarray(open_rgb(tmp_path / "bits.png")) == 255)
    assert np.asarray(open_rgb(tmp_path / "cmyk.tif"))[0, 0].tolist() == [255, 0, 0]


def test_16bit_copy_decodes_the_same_in_face_and_cifar_folders(tmp_path):
    grey = (np.random.default_rng(0).integers(0, 256, (40, 40))).astype(np.uint8)
    faces = tmp_path / "faces"
    (faces / "Ann").mkdir(parents=True)
    Image.fromarray(grey).save(faces / "Ann" / "Ann_0001.png")
    save_16bit_copy(grey, faces / "Ann" / "Ann_0002.png")
    ds, report = load_identity_folders(faces, FacePreprocess(crop=32, size=16))
    assert not report.bad and np.array_equal(ds.images[0], ds.images[1])

    cifar = tmp_path / "cifar"
    make_cifar_folder(cifar)
    small = grey[:32, :32]
    Image.fromarray(small).save(cifar / "train" / "cat" / "eight.png")
    save_16bit_copy(small, cifar / "train" / "cat" / "sixteen.png")
    splits = load_cifar10(cifar, val_size=1, seed=0)
    train = np.concatenate([splits.train_images, splits.val_images])
    hits = [img for img in train if np.array_equal(img[..., 0], small)]
    assert len(hits) == 2 and not splits.report.bad     # both copies, identical pixels


def test_faces_verify_of_an_image_and_its_16bit_copy_says_same_person(tmp_path, capsys):
    from cnnlab.models.siamese import SiameseNet, save_model
    config = tiny_config()
    model = SiameseNet.from_config(config.model_config())
    # A threshold of 1e-6: only identical decoded pixels give "same person".
    save_model(model, tmp_path / "model.pt", extra={"threshold": 1e-6, "crop": SIDE, "input_size": 32,
                                                     "distance": config.distance})
    grey = (np.random.default_rng(1).integers(0, 256, (SIDE, SIDE))).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "face.png")
    save_16bit_copy(grey, tmp_path / "face16.png")
    spec = FacePreprocess(crop=SIDE, size=32)
    decode = lambda f: decode_images([str(f)], spec.transform, (32, 32), strict=True)[0]  # noqa: E731
    assert np.array_equal(decode(tmp_path / "face.png"), decode(tmp_path / "face16.png"))
    capsys.readouterr()
    assert main(["faces", "verify", str(tmp_path / "model.pt"), str(tmp_path / "face.png"),
                 str(tmp_path / "face16.png"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "same person" in out and "distance 0.0000" in out


# ---------------------------------------------------------------------------- rows 2, 3: bad files in CIFAR

def make_cifar_folder(root: Path, per_class: int = 3) -> Path:
    """train/ and test/ with the ten CIFAR-10 class folders, tiny PNGs of one colour per class."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (10, 3))
    for split in ("train", "test"):
        for c, name in enumerate(CIFAR10_CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (32, 32), tuple(int(v) for v in colours[c])).save(root / split / name / f"{i}.png")
    return root


def add_bad_files(folder: Path) -> list[str]:
    """A zero-byte file, a truncated JPEG, a text file named .jpg and a symlink loop."""
    good = folder / "good.jpg"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(good, quality=95)
    data = good.read_bytes()
    good.unlink()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("this is not an image\n")
    self_loop(folder / "loop.jpg")
    return ["empty.jpg", "loop.jpg", "text.jpg", "truncated.jpg"]


@needs_symlinks
def test_cifar_bad_files_are_named_with_reasons_like_the_face_loader(tmp_path):
    root = make_cifar_folder(tmp_path / "cifar")
    names = add_bad_files(root / "train" / "dog")
    splits = load_cifar10(root, val_size=2)
    assert sorted(Path(p).name for p, _ in splits.report.bad) == names
    reasons = {Path(p).name: r for p, r in splits.report.bad}
    assert reasons["empty.jpg"] == "is empty (0 bytes)" and reasons["loop.jpg"] == "is a symbolic link loop"
    assert "truncated" in reasons["truncated.jpg"] and reasons["text.jpg"] == "not an image format Pillow can read"
    assert splits.info["skipped_files"] == 4 and splits.report.total == 64
    assert len(splits.train_labels) + len(splits.val_labels) == 30 and len(splits.test_labels) == 30
    # The same report object and reasons from a face folder holding the same files.
    faces = tmp_path / "faces"
    shutil.copytree(root / "train", faces, symlinks=True)
    _, face_report = load_identity_folders(faces, FacePreprocess(crop=None, size=16))
    assert type(face_report) is type(splits.report)
    assert {Path(p).name: r for p, r in face_report.bad} == reasons
    # Cached: the second load names the same files, spelled as this call's paths.
    again = load_cifar10(root, val_size=2)
    assert again.info["cache_hit"] is True and again.report == splits.report


@needs_symlinks
def test_cifar_compare_reports_skipped_files_in_results_and_the_run_folder(tmp_path, capsys):
    root = make_cifar_folder(tmp_path / "cifar")
    names = add_bad_files(root / "train" / "dog")
    out = tmp_path / "run"
    assert main(["cifar", "compare", "--blocks", "A", "--data", str(root), "--out", str(out), "--no-report",
                 *CIFAR_TINY]) == 0
    printed = capsys.readouterr().out
    assert "4 unreadable file(s) skipped" in printed
    assert f"{root / 'train' / 'dog' / 'loop.jpg'}: is a symbolic link loop" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["skipped_files"] == 4
    for folder in (out, out / "A"):
        listed = json.loads((folder / BAD_FILES_NAME).read_text())
        assert listed["skipped"] == 4 and sorted(Path(f["path"]).name for f in listed["files"]) == names
    assert json.loads((out / "A" / "final.json").read_text())["skipped_files"] == 4


def test_a_fixed_folder_drops_the_stale_bad_file_list(tmp_path):
    root = make_cifar_folder(tmp_path / "cifar")
    (root / "train" / "cat" / "bad.png").write_bytes(b"junk")
    from cnnlab.tasks.cifar import CifarDataConfig, load_data
    lines = []
    load_data(CifarDataConfig(root=str(root), val_size=2), log=lines.append, out=tmp_path / "run")
    assert (tmp_path / "run" / BAD_FILES_NAME).is_file() and any("bad.png" in line for line in lines)
    (root / "train" / "cat" / "bad.png").unlink()
    lines.clear()
    load_data(CifarDataConfig(root=str(root), val_size=2), log=lines.append, out=tmp_path / "run")
    assert not (tmp_path / "run" / BAD_FILES_NAME).exists() and lines == []


@needs_symlinks
def test_symlink_loops_in_face_folders_and_pair_files_are_named(tmp_path):
    faces = tmp_path / "faces"
    (faces / "Ann").mkdir(parents=True)
    Image.new("RGB", (20, 20), (1, 2, 3)).save(faces / "Ann" / "Ann_0001.jpg")
    self_loop(faces / "Ann" / "Ann_0002.jpg")
    self_loop(faces / "Zed")                                    # a looping "person folder" is no folder
    ds, report = load_identity_folders(faces, FacePreprocess(crop=None, size=8))
    assert ds.paths == ["Ann/Ann_0001.jpg"] and ds.people == ["Ann"]
    assert report.bad == [(str(faces / "Ann" / "Ann_0002.jpg"), "is a symbolic link loop")]
    from cnnlab.data.lfw import Pair, validate_pairs
    with pytest.raises(CnnlabError, match=r"pairs.txt:7: image .*Ann_0002.jpg is a symbolic link loop"):
        validate_pairs([Pair("Ann", 1, "Ann", 2, True, 0, 7)], faces, source="pairs.txt")


# ---------------------------------------------------------------------------- row 4: empty classes

def test_empty_class_folder_is_one_line_before_training_and_nothing_is_written(tmp_path, capsys):
    root = make_cifar_folder(tmp_path / "cifar")
    (root / "train" / "zebra").mkdir()
    (root / "test" / "zebra").mkdir()
    (root / "test" / "zebra" / "README.txt").write_text("not an image")
    with pytest.raises(CnnlabError, match=r"class folder .*train/zebra has no image files"):
        load_cifar10(root, val_size=2)
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["cifar", "train", "--block", "A", "--data", str(root), "--out", str(out), *CIFAR_TINY]) == 2
    line = only_one_line(capsys.readouterr().err)
    assert f"{root / 'train' / 'zebra'}" in line and "has no image files" in line
    assert empty_or_absent(out)


def test_class_folder_whose_files_all_fail_is_named(tmp_path):
    root = make_cifar_folder(tmp_path / "cifar")
    for f in (root / "test" / "frog").iterdir():
        f.write_bytes(b"broken")
    with pytest.raises(CnnlabError, match=r"class folder .*test/frog has no readable image: all 3 file\(s\)"):
        load_cifar10(root, val_size=2)


def test_wrong_number_of_class_folders_fails_before_training(tmp_path, capsys):
    root = make_cifar_folder(tmp_path / "cifar")
    for split in ("train", "test"):
        (root / split / "zebra").mkdir()
        Image.new("RGB", (32, 32)).save(root / split / "zebra" / "0.png")
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["cifar", "train", "--block", "A", "--data", str(root), "--out", str(out), *CIFAR_TINY]) == 2
    assert "11 classes" in only_one_line(capsys.readouterr().err)
    assert empty_or_absent(out)


# ---------------------------------------------------------------------------- row 5: many bad face files

def test_report_preview_names_a_few_and_points_at_the_full_list(tmp_path):
    faces = tmp_path / "faces"
    (faces / "Ann").mkdir(parents=True)
    Image.new("RGB", (20, 20)).save(faces / "Ann" / "Ann_0001.jpg")
    for n in range(2, 9):
        (faces / "Ann" / f"Ann_{n:04d}.jpg").write_text(f"bad {n}")
    _, report = load_identity_folders(faces, FacePreprocess(crop=None, size=8))
    assert len(report.bad) == 7
    written = report.write(tmp_path / "run")
    lines = report.preview(listed_in=written)
    assert len(lines) == 6 and all(line.startswith("skipped ") for line in lines[:5])
    assert lines[5] == f"... and 2 more unreadable file(s); all 7 are listed in {written}"
    listed = json.loads(written.read_text())
    assert listed["skipped"] == 7 and listed["tried"] == 8 and len(listed["files"]) == 7


@pytest.fixture(scope="module")
def fake_lfw(tmp_path_factory) -> Path:
    return make_fake_lfw(tmp_path_factory.mktemp("lfw"))


def copy_lfw(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def stand_in_training(monkeypatch, calls: list):
    """Training replaced by a recorded no-op: these tests are about what happens around it."""
    import cnnlab.tasks.faces.view1 as view1
    import cnnlab.tasks.faces.view2 as view2
    from test_faces_rules import fake_trained

    def fake_train(*args, **kwargs):
        calls.append(args[4] if len(args) > 4 else kwargs.get("run_dir"))
        return fake_trained(0.5)
    for module in (view1, view2):  # each run module calls the training it imported
        monkeypatch.setattr(module, "train_verifier", fake_train)
        monkeypatch.setattr(module, "embed_images", lambda model, images, **k: np.zeros((len(images), 16), np.float32))
        monkeypatch.setattr(module, "save_model", lambda *a, **k: None)


def test_view1_names_every_bad_face_file_in_the_run_folder(fake_lfw, tmp_path, monkeypatch):
    from cnnlab.tasks.faces import train_view1
    root = copy_lfw(fake_lfw, tmp_path / "lfw")
    images = LFWProtocol(root).image_root
    bad = [images / "P00" / f"P00_{n:04d}.jpg" for n in range(5, 12)]   # in no pair
    for path in bad:
        path.write_bytes(b"\xff\xd8\xff broken")
    calls, lines = [], []
    stand_in_training(monkeypatch, calls)
    out = tmp_path / "run"
    metrics = train_view1(tiny_config(), root, out, evaluate_test=True, log=lines.append)
    assert calls and metrics["skipped_files"] == 7 and metrics["test"]["n_pairs"] == 16
    skipped = [line for line in lines if "skipped " in line and "P00_00" in line]
    assert len(skipped) == 5                                    # on screen: the first five ...
    assert any(f"all 7 are listed in {out / BAD_FILES_NAME}" in line for line in lines)  # ... and where the rest are
    listed = json.loads((out / BAD_FILES_NAME).read_text())
    assert sorted(f["path"] for f in listed["files"]) == sorted(str(p) for p in bad)
    assert json.loads((out / "metrics.json").read_text())["skipped_files"] == 7


# ---------------------------------------------------------------------------- row 6: scored pairs

def break_image_of_first_pair(root: Path, pairs_file: str) -> Path:
    protocol = LFWProtocol(root)
    pairs = protocol.view1_test_pairs if pairs_file == "pairsDevTest.txt" else protocol.view2_pairs
    path = protocol.image_root / pairs[0].relpaths[0]
    path.write_bytes(path.read_bytes()[:200])                   # a truncated JPEG
    return path


def test_unreadable_devtest_image_fails_before_training_and_writes_nothing(fake_lfw, tmp_path, monkeypatch):
    from cnnlab.tasks.faces import train_view1
    root = copy_lfw(fake_lfw, tmp_path / "lfw")
    broken = break_image_of_first_pair(root, "pairsDevTest.txt")
    calls = []
    stand_in_training(monkeypatch, calls)
    out = tmp_path / "run"
    with pytest.raises(CnnlabError) as err:
        train_view1(tiny_config(), root, out, evaluate_test=True, log=quiet)
    message = str(err.value)
    assert "\n" not in message and f"{root / 'pairsDevTest.txt'}:2" in message and str(broken) in message
    assert "before training" in message and "pairs to be scored" in message
    assert calls == [] and empty_or_absent(out)
    # Without the test pairs the same data trains; the bad image is only listed.
    metrics = train_view1(tiny_config(), root, out, evaluate_test=False, log=quiet)
    assert calls and metrics["skipped_files"] == 1
    assert json.loads((out / BAD_FILES_NAME).read_text())["files"][0]["path"] == str(broken)


def test_unreadable_view2_pair_image_fails_before_the_first_fold(fake_lfw, tmp_path, monkeypatch):
    from cnnlab.tasks.faces import train_view2
    root = copy_lfw(fake_lfw, tmp_path / "lfw")
    broken = break_image_of_first_pair(root, "pairs.txt")
    calls = []
    stand_in_training(monkeypatch, calls)
    with pytest.raises(CnnlabError, match=rf"pairs.txt:2: image {broken} is unreadable"):
        train_view2(tiny_config(), root, tmp_path / "run", folds=[9], log=quiet)  # fold 10 does not use it
    assert calls == [] and empty_or_absent(tmp_path / "run")


def test_faces_train_cli_exits_2_with_one_line_before_training(fake_lfw, tmp_path, capsys):
    root = copy_lfw(fake_lfw, tmp_path / "lfw")
    broken = break_image_of_first_pair(root, "pairsDevTest.txt")
    out = tmp_path / "run"
    capsys.readouterr()
    code = main(["faces", "train", "--preset", "lfw", "--data", str(root), "--out", str(out), "--weights", "none",
                 "--input-size", "32", "--crop", str(SIDE), "--device", "cpu", "--no-progress", "--epochs", "1"])
    captured = capsys.readouterr()
    assert code == 2 and str(broken) in only_one_line(captured.err)
    assert "epoch" not in captured.out.lower() and empty_or_absent(out)


# ---------------------------------------------------------------------------- the cache

def test_cache_survives_unstatable_files_and_strict_names_cached_bad_files(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    paths = [folder / "a.png", folder / "missing.png"]
    kwargs = dict(name="t", spec={"k": 1})
    _, ok, report = decode_cached(paths, None, (8, 8), **kwargs)
    assert ok.tolist() == [0] and report.bad == [(str(paths[1]), "does not exist")]
    with pytest.raises(CnnlabError, match=r"unreadable image .*missing.png: does not exist"):
        decode_cached(paths, None, (8, 8), strict=True, **kwargs)
    Image.new("RGB", (8, 8), (9, 9, 9)).save(folder / "missing.png")        # fixed: a new key, decoded again
    images, ok, report = decode_cached(paths, None, (8, 8), **kwargs)
    assert ok.tolist() == [0, 1] and not report.bad and images[1, 0, 0].tolist() == [9, 9, 9]
