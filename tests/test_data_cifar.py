import os
import pickle
import time

import numpy as np
import pytest
from PIL import Image

import cnnlab.data.cifar as cifar
import cnnlab.data.images as images
from cnnlab.core.errors import CnnlabError
from cnnlab.data.cifar import CIFAR10_CLASSES, find_cifar_root, load_cifar10, stratified_split, synthetic_cifar
from conftest import data_dir

# ---------------------------------------------------------------------------- splits

def test_stratified_split_is_disjoint_stratified_and_seeded():
    labels = np.repeat(np.arange(4), [100, 200, 300, 400])
    train, val = stratified_split(labels, 100, seed=3)
    assert len(val) == 100 and len(train) == 900
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(1000))
    assert np.bincount(labels[val]).tolist() == [10, 20, 30, 40]
    again_train, again_val = stratified_split(labels, 100, seed=3)
    assert np.array_equal(again_val, val) and np.array_equal(again_train, train)
    assert not np.array_equal(stratified_split(labels, 100, seed=4)[1], val)


def test_stratified_split_hits_the_exact_size_with_uneven_shares():
    labels = np.repeat(np.arange(3), [7, 11, 13])
    _, val = stratified_split(labels, 10, seed=0)
    counts = np.bincount(labels[val], minlength=3)
    assert counts.sum() == 10
    assert np.all(np.abs(counts - np.array([7, 11, 13]) * 10 / 31) < 1)


def test_stratified_split_rejects_impossible_sizes():
    with pytest.raises(CnnlabError, match="validation size"):
        stratified_split(np.zeros(10), 10, seed=0)


def test_train_subset_is_stratified_and_leaves_the_validation_split_alone():
    ids = np.arange(1000)
    # Each 1x1 image encodes its index, so splits can be compared by identity.
    images = np.stack([ids // 256, ids % 256, np.zeros_like(ids)], -1).astype(np.uint8)[:, None, None, :]
    labels = ids % 10

    def split(train_subset):
        return cifar._make_splits(images, labels, images[:10], labels[:10], CIFAR10_CLASSES, source="t",
                                  val_size=200, seed=5, train_subset=train_subset, info={})

    def image_ids(x):
        return set((x[:, 0, 0, 0].astype(int) * 256 + x[:, 0, 0, 1]).tolist())
    whole, part = split(None), split(300)
    assert np.array_equal(part.val_images, whole.val_images)
    assert len(part.train_labels) == 300 and np.bincount(part.train_labels).tolist() == [30] * 10
    assert image_ids(part.train_images) <= image_ids(whole.train_images)
    assert not image_ids(part.train_images) & image_ids(part.val_images)
    assert part.info["train_subset"] == 300 and part.info["train"] == 300
    with pytest.raises(CnnlabError, match="train subset"):
        split(801)


# ---------------------------------------------------------------------------- synthetic

def test_synthetic_has_the_cifar_form_and_class_dependent_pixels():
    s = synthetic_cifar(500, 100, val_size=100, seed=0)
    assert s.train_images.shape == (400, 32, 32, 3) and s.train_images.dtype == np.uint8
    assert s.val_images.shape == (100, 32, 32, 3) and s.test_images.shape == (100, 32, 32, 3)
    assert s.train_labels.dtype == np.int64 and s.class_names == CIFAR10_CLASSES
    assert np.bincount(s.val_labels).tolist() == [10] * 10
    # A nearest-class-mean colour classifier fit on train must beat chance on test by far,
    # so a model has something to learn.
    means = np.stack([s.train_images[s.train_labels == c].mean((0, 1, 2)) for c in range(10)])
    test_colour = s.test_images.mean((1, 2))
    pred = np.argmin(((test_colour[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == s.test_labels).mean() > 0.5
    again = synthetic_cifar(500, 100, val_size=100, seed=0)
    assert np.array_equal(again.train_images, s.train_images)


# ---------------------------------------------------------------------------- pickles

def _write_official_pickles(folder, per_batch=6, seed=0):
    """A tiny copy of `cifar-10-batches-py` in the official format (Python 2 style bytes keys)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * per_batch}, f, protocol=2)
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in CIFAR10_CLASSES],
                     b"num_cases_per_batch": per_batch, b"num_vis": 3072}, f, protocol=2)
    return written


def test_pickle_reader_decodes_the_official_layout(tmp_path):
    written = _write_official_pickles(tmp_path / "cifar-10-batches-py")
    assert find_cifar_root(tmp_path) == ("pickle", (tmp_path / "cifar-10-batches-py").resolve())
    assert find_cifar_root(tmp_path / "cifar-10-batches-py")[0] == "pickle"
    s = load_cifar10(tmp_path, val_size=0)
    assert s.source.startswith("pickle:") and s.class_names == CIFAR10_CLASSES
    assert s.train_images.shape == (30, 32, 32, 3) and s.test_images.shape == (6, 32, 32, 3)
    data, labels = written["test_batch"]
    assert s.test_labels.tolist() == labels
    # Rows are channel planes: pixel (row 2, col 5) of channel 1 sits at 1024 + 2 * 32 + 5.
    assert s.test_images[3, 2, 5, 1] == data[3, 1024 + 2 * 32 + 5]
    assert np.array_equal(s.test_images[0].transpose(2, 0, 1).reshape(-1), data[0])
    train_data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert np.array_equal(s.train_images.transpose(0, 3, 1, 2).reshape(30, -1), train_data)


def test_pickle_reader_refuses_code_in_a_batch_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_official_pickles(folder)

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(CnnlabError, match="test_batch is not a CIFAR-10 pickle batch"):
        load_cifar10(tmp_path, val_size=0)


# ---------------------------------------------------------------------------- ImageFolder

COLOURS = {"bird": (200, 30, 30), "cat": (30, 200, 30), "dog": (30, 30, 200)}


def _write_imagefolder(root, per_class=4):
    for split in ("train", "test"):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (32, 32), colour).save(folder / f"{i:04d}.png")
    # A JPEG of another size (resized on decode) and a broken file (reported, skipped).
    Image.new("RGB", (64, 64), COLOURS["dog"]).save(root / "train" / "dog" / "big.jpg", quality=95)
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "train" / "cat" / "notes.txt").write_text("ignored: not an image")


def test_imagefolder_reader_uses_sorted_class_folders(tmp_path):
    _write_imagefolder(tmp_path / "cifar10-jpg")
    kind, folder = find_cifar_root(tmp_path)
    assert kind == "imagefolder" and folder == (tmp_path / "cifar10-jpg").resolve()
    s = load_cifar10(tmp_path, val_size=3, seed=0)
    assert s.class_names == ("bird", "cat", "dog")
    assert len(s.train_labels) + len(s.val_labels) == 13 and len(s.test_labels) == 12
    assert np.bincount(s.val_labels).tolist() == [1, 1, 1]
    for split_images, labels in ((s.train_images, s.train_labels), (s.test_images, s.test_labels)):
        assert split_images.dtype == np.uint8 and split_images.shape[1:] == (32, 32, 3)
        colours = np.array([COLOURS[n] for n in s.class_names])
        # PNGs are exact; the one JPEG is within compression error.
        assert np.abs(split_images.mean((1, 2)) - colours[labels]).max() < 4
    assert len(s.report.bad) == 1 and s.report.bad[0][0].endswith("broken.jpg")
    assert s.info["skipped_files"] == 1 and s.report.total == 26


def test_imagefolder_with_different_train_and_test_classes_is_an_error(tmp_path):
    _write_imagefolder(tmp_path)
    (tmp_path / "test" / "emu").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "test" / "emu" / "0.png")
    with pytest.raises(CnnlabError, match=r"only in test \['emu'\]"):
        load_cifar10(tmp_path, val_size=0)


def test_second_load_hits_the_cache_and_a_changed_file_misses(tmp_path, monkeypatch):
    _write_imagefolder(tmp_path)
    calls = []
    real_decode = images.decode_images

    def counting_decode(*args, **kwargs):
        calls.append(len(args[0]))
        return real_decode(*args, **kwargs)
    monkeypatch.setattr(images, "decode_images", counting_decode)
    first = load_cifar10(tmp_path, val_size=3)
    second = load_cifar10(tmp_path, val_size=3)
    assert len(calls) == 1 and first.info["cache_hit"] is False and second.info["cache_hit"] is True
    assert np.array_equal(first.train_images, second.train_images)
    assert second.report == first.report and len(second.report.bad) == 1
    path = tmp_path / "train" / "bird" / "0000.png"
    # The same bytes with a new mtime (the data copied again) still hit: the key is the content.
    later = time.time() + 5
    os.utime(path, (later, later))
    assert load_cifar10(tmp_path, val_size=3).info["cache_hit"] is True and len(calls) == 1
    # New bytes under the same name (and the same size) miss.
    Image.new("RGB", (32, 32), (9, 9, 9)).save(path)
    third = load_cifar10(tmp_path, val_size=3)
    assert len(calls) == 2 and third.info["cache_hit"] is False


# ---------------------------------------------------------------------------- finding data

def test_missing_data_is_a_one_line_error_naming_where_it_looked(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(CnnlabError) as err:
        load_cifar10(missing)
    message = str(err.value)
    assert "\n" not in message and str(missing) in message
    assert "--data" in message and "CNNLAB_DATA" in message

    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path))
    with pytest.raises(CnnlabError, match=f"{tmp_path}.*from CNNLAB_DATA"):
        find_cifar_root(None)
    monkeypatch.delenv("CNNLAB_DATA")
    with pytest.raises(CnnlabError, match="download"):
        find_cifar_root(None)


def test_data_root_comes_from_the_environment_when_not_given(tmp_path, monkeypatch):
    _write_official_pickles(tmp_path / "cifar-10-batches-py")
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path))
    assert find_cifar_root(None) == ("pickle", (tmp_path / "cifar-10-batches-py").resolve())


# ---------------------------------------------------------------------------- real data

@pytest.mark.data
def test_real_cifar10_jpg():
    root = data_dir("cifar10-jpg")
    start = time.perf_counter()
    s = load_cifar10(root)
    seconds = time.perf_counter() - start
    assert s.source == f"imagefolder:{root.resolve()}"
    assert s.class_names == CIFAR10_CLASSES
    assert len(s.train_labels) + len(s.val_labels) == 50_000 and len(s.val_labels) == 5_000
    assert len(s.test_labels) == 10_000
    train_val_labels = np.concatenate([s.train_labels, s.val_labels])
    assert np.bincount(train_val_labels).tolist() == [5_000] * 10
    assert np.bincount(s.val_labels).tolist() == [500] * 10
    assert np.bincount(s.test_labels).tolist() == [1_000] * 10
    assert s.train_images.dtype == np.uint8 and s.train_images.shape[1:] == (32, 32, 3)
    pixels = s.train_images.reshape(-1, 3) / 255.0
    assert np.allclose(pixels.mean(0), (0.49, 0.48, 0.45), atol=0.02)
    assert np.allclose(pixels.std(0), (0.247, 0.243, 0.261), atol=0.02)
    assert s.report.bad == []
    assert s.info["cache_hit"] or seconds < 60
    again = load_cifar10(root)
    assert again.info["cache_hit"] is True
    assert np.array_equal(again.val_labels, s.val_labels)
