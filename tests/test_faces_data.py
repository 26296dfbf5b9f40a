"""Identity-folder loading: preprocessing, bad files, the shared cache, and real AT&T/LFW."""
import numpy as np
import pytest
from PIL import Image

from cnnlab.core.errors import CnnlabError
from cnnlab.data.cache import ArrayCache
from cnnlab.data.faces import FacePreprocess, load_identity_folders
from cnnlab.data.lfw import LFWProtocol, Pair
from conftest import data_dir

SPEC = FacePreprocess(crop=40, size=16)


def solid(color, size=(60, 60), mode="RGB"):
    return Image.new(mode, size, color)


@pytest.fixture
def bad_tree(tmp_path):
    root = tmp_path / "faces"
    for person in ("Ann", "Bob", "Cy"):
        (root / person).mkdir(parents=True)
    solid((200, 10, 10)).save(root / "Ann" / "Ann_0001.jpg", quality=95)
    solid(128, mode="L").save(root / "Ann" / "Ann_0002.png")                       # greyscale
    solid((0, 0, 255, 128), mode="RGBA").save(root / "Ann" / "Ann_0003.png")       # alpha
    solid((0, 0, 0, 0), mode="CMYK").save(root / "Bob" / "Bob_0001.jpg")           # CMYK JPEG = white
    solid((10, 200, 10)).save(root / "Bob" / "Bob_0002.jpg")
    good = root / "Cy" / "Cy_0001.jpg"
    solid((10, 10, 200), size=(200, 200)).save(good, quality=95)
    data = good.read_bytes()
    (root / "Cy" / "Cy_0002.jpg").write_bytes(data[: len(data) // 2])             # truncated JPEG
    (root / "Cy" / "Cy_0003.jpg").write_bytes(b"")                                 # zero bytes
    (root / "Cy" / "Cy_0004.jpg").write_text("this is not an image\n")              # text named .jpg
    (root / "Cy" / "notes.txt").write_text("ignored: not an image extension")
    return root


def test_bad_files_reported_by_name_good_ones_kept(bad_tree):
    ds, report = load_identity_folders(bad_tree, SPEC)
    bad_names = sorted(p.rsplit("/", 1)[-1] for p, _ in report.bad)
    assert bad_names == ["Cy_0002.jpg", "Cy_0003.jpg", "Cy_0004.jpg"]
    assert "3 unreadable" in report.summary()
    assert ds.paths == ["Ann/Ann_0001.jpg", "Ann/Ann_0002.png", "Ann/Ann_0003.png",
                        "Bob/Bob_0001.jpg", "Bob/Bob_0002.jpg", "Cy/Cy_0001.jpg"]
    assert ds.images.shape == (6, 16, 16, 3) and ds.images.dtype == np.uint8
    assert ds.people == ["Ann", "Bob", "Cy"] and ds.labels.tolist() == [0, 0, 0, 1, 1, 2]
    cmyk = ds.images[ds.index_of("Bob", 1)].astype(int)
    assert cmyk.min() >= 245                                      # CMYK (0,0,0,0) is white in RGB
    grey = ds.images[ds.index_of("Ann", 2)].astype(int)
    assert np.all(grey == 128)                                    # greyscale -> R = G = B
    red = ds.images[ds.index_of("Ann", 1)].astype(int)
    assert abs(red[..., 0].mean() - 200) < 4 and red[..., 1].mean() < 20
    assert ds.negatives_only_people() == ["Cy"]                   # left with one image
    assert "1 with fewer than 2 images" in ds.summary(report)


def test_strict_stops_naming_the_file(bad_tree):
    with pytest.raises(CnnlabError, match=r"Cy_000[234]\.jpg"):
        load_identity_folders(bad_tree, SPEC, strict=True)
    # also when the bad files were recorded by an earlier (non-strict, cached) load
    load_identity_folders(bad_tree, SPEC)
    with pytest.raises(CnnlabError, match=r"unreadable image .*Cy_000[234]\.jpg"):
        load_identity_folders(bad_tree, SPEC, strict=True)


def test_decoded_once_then_cached(bad_tree, tmp_path):
    cache = ArrayCache(tmp_path / "cache")
    first, _ = load_identity_folders(bad_tree, SPEC, cache=cache)
    assert cache.last_hit is False
    second, report = load_identity_folders(bad_tree, SPEC, cache=cache)
    assert cache.last_hit is True and len(report.bad) == 3
    assert np.array_equal(first.images, second.images) and first.paths == second.paths
    load_identity_folders(bad_tree, FacePreprocess(crop=40, size=24), cache=cache)
    assert cache.last_hit is False
    # replacing a source file invalidates the entry
    solid((1, 2, 3)).save(bad_tree / "Bob" / "Bob_0002.jpg")
    third, _ = load_identity_folders(bad_tree, SPEC, cache=cache)
    assert cache.last_hit is False and not np.array_equal(third.images, first.images)


def test_centre_crop_and_exif_orientation(tmp_path):
    root = tmp_path / "faces"
    (root / "P").mkdir(parents=True)
    # a 100x60 image: left half black, right half white, centre 20 px band grey
    img = np.zeros((60, 100, 3), np.uint8)
    img[:, 50:] = 255
    img[:, 40:60] = 128
    Image.fromarray(img).save(root / "P" / "P_0001.png")
    # EXIF orientation 6 (rotate 90 clockwise to display): the stored 40x20 landscape
    # image is a 20x40 portrait once honoured; top half red in display orientation.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(root / "P" / "P_0002.jpg", exif=exif, quality=100)
    ds, _ = load_identity_folders(root, FacePreprocess(crop=20, size=20))
    assert np.all(np.abs(ds.images[0].astype(int) - 128) <= 1)   # only the centre band survives the crop
    rotated = ds.images[1].astype(int)                            # 20x20 centre of the 20x40 portrait
    assert rotated.shape == (20, 20, 3)
    assert rotated[:8, :, 0].mean() > 200 and rotated[12:, :, 0].mean() < 50


def test_spec_validation():
    with pytest.raises(ValueError):
        FacePreprocess(size=0)
    with pytest.raises(ValueError):
        FacePreprocess(crop=0)
    assert FacePreprocess(crop=None, size=8).cache_spec()["crop"] is None


def test_people_filter_subset_and_pair_indices(bad_tree):
    ds, _ = load_identity_folders(bad_tree, SPEC, people=["Ann", "Bob"])
    assert ds.people == ["Ann", "Bob"] and len(ds) == 5
    with pytest.raises(CnnlabError, match="Zed"):
        load_identity_folders(bad_tree, SPEC, people=["Ann", "Zed"])
    sub = ds.subset(["Bob"])
    assert sub.people == ["Bob"] and sub.labels.tolist() == [0, 0]
    assert np.array_equal(sub.images[1], ds.images[ds.index_of("Bob", 2)])
    i, j, same = ds.pair_indices([Pair("Ann", 1, "Ann", 3, True), Pair("Ann", 2, "Bob", 1, False)])
    assert i.tolist() == [0, 1] and j.tolist() == [2, 3] and same.tolist() == [True, False]
    with pytest.raises(CnnlabError, match="no decoded image 9"):
        ds.index_of("Ann", 9)


def test_empty_or_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(CnnlabError, match="not found"):
        load_identity_folders(tmp_path / "nope")
    (tmp_path / "empty" / "Ann").mkdir(parents=True)
    with pytest.raises(CnnlabError, match="no image files"):
        load_identity_folders(tmp_path / "empty")


@pytest.mark.data
def test_real_att_faces_greyscale_to_rgb():
    ds, report = load_identity_folders(data_dir("att-faces"), FacePreprocess(crop=None, size=64))
    assert len(ds) == 400 and ds.num_people == 40 and not report.bad
    assert np.all(ds.images_per_person() == 10)
    assert ds.images.shape == (400, 64, 64, 3)
    assert np.array_equal(ds.images[..., 0], ds.images[..., 1]) and np.array_equal(ds.images[..., 1], ds.images[..., 2])
    assert ds.index_of("s3", 7) == ds.paths.index("s3/7.pgm")


@pytest.mark.data
def test_real_lfw_people_subset_matches_protocol_pairs():
    proto = LFWProtocol(data_dir("lfw"))
    pairs = proto.view1_test_pairs[:20] + proto.view1_test_pairs[500:520]
    people = sorted({n for p in pairs for n in (p.name1, p.name2)})
    ds, report = load_identity_folders(proto.image_root, FacePreprocess(), people=people)
    assert not report.bad and ds.images.shape[1:] == (112, 112, 3)
    i, j, same = ds.pair_indices(pairs)
    assert same.tolist() == [p.same for p in pairs]
    assert all(ds.paths[a] == p.relpaths[0] and ds.paths[b] == p.relpaths[1] for a, b, p in zip(i, j, pairs))
    assert np.array_equal(ds.labels[i] == ds.labels[j], same)


def test_only_the_files_asked_for_are_loaded(bad_tree, tmp_path):
    cache = ArrayCache(tmp_path / "cache")
    ds, report = load_identity_folders(bad_tree, SPEC, files=["Ann/Ann_0002.png", "Bob/Bob_0002.jpg"], cache=cache)
    assert ds.paths == ["Ann/Ann_0002.png", "Bob/Bob_0002.jpg"] and ds.people == ["Ann", "Bob"]
    assert not report.bad
    with pytest.raises(CnnlabError, match=r"1 requested image\(s\) not found .*Ann/Ann_0009.jpg"):
        load_identity_folders(bad_tree, SPEC, files=["Ann/Ann_0001.jpg", "Ann/Ann_0009.jpg"], cache=cache)
