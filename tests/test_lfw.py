"""LFW protocol parsing, validation and identity splits (hand-written files + the real set)."""
from pathlib import Path

import pytest

from cnnlab.core.errors import CnnlabError
from cnnlab.data.lfw import LFWProtocol, Pair, image_relpath, parse_pairs, parse_people, split_people
from conftest import data_dir

# people per View 2 set (sets are disjoint), with their image counts
SETS = [{"Ann": 3, "Bob": 1, "Cy": 2}, {"Dee": 2, "Eve": 1, "Fay": 2}]


def make_tree(root: Path, people: dict[str, int]) -> Path:
    images = root / "lfw-deepfunneled"
    for name, count in people.items():
        (images / name).mkdir(parents=True, exist_ok=True)
        for n in range(1, count + 1):
            (images / image_relpath(name, n)).write_bytes(b"")  # existence is what is validated
    return images


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


VIEW2_PAIRS = """2\t2
Ann\t1\t2
Cy\t1\t2
Ann\t3\tBob\t1
Cy  2   Bob   1
Dee\t1\t2
Fay\t1\t2
Dee\t2\tEve\t1
Fay\t2\tEve\t1
"""


@pytest.fixture
def lfw_root(tmp_path):
    everyone = {k: v for s in SETS for k, v in s.items()}
    make_tree(tmp_path, everyone)
    write(tmp_path / "pairs.txt", VIEW2_PAIRS)
    people = "2\n" + "".join(f"{len(s)}\n" + "".join(f"{n}\t{c}\n" for n, c in s.items()) for s in SETS)
    write(tmp_path / "people.txt", people)
    write(tmp_path / "pairsDevTrain.txt", "1\nAnn\t1\t3\nAnn\t2\tBob\t1\n")
    write(tmp_path / "pairsDevTest.txt", "1\nDee\t1\t2\nFay\t1\tEve\t1\n")
    write(tmp_path / "peopleDevTrain.txt", "3\nAnn\t3\nBob\t1\nCy\t2\n")
    write(tmp_path / "peopleDevTest.txt", "3\nDee\t2\nEve\t1\nFay\t2\n")
    return tmp_path


def test_view2_pairs_both_line_formats(lfw_root):
    pairs = parse_pairs(lfw_root / "pairs.txt", image_root=lfw_root / "lfw-deepfunneled")
    assert len(pairs) == 8
    assert pairs[0] == Pair("Ann", 1, "Ann", 2, True, 0)
    assert pairs[3] == Pair("Cy", 2, "Bob", 1, False, 0)      # spaces as separators too
    assert pairs[3].line == 5
    assert pairs[4] == Pair("Dee", 1, "Dee", 2, True, 1)
    assert [p.same for p in pairs] == [True, True, False, False] * 2
    assert [p.fold for p in pairs] == [0] * 4 + [1] * 4
    assert pairs[2].relpaths == ("Ann/Ann_0003.jpg", "Bob/Bob_0001.jpg")


def test_view1_pairs_header_is_a_single_count(lfw_root):
    pairs = parse_pairs(lfw_root / "pairsDevTrain.txt")
    assert pairs == [Pair("Ann", 1, "Ann", 3, True, 0), Pair("Ann", 2, "Bob", 1, False, 0)]


@pytest.mark.parametrize("text, line, message", [
    ("1\nAnn\t1\nAnn\t2\tBob\t1\n", 2, "matched pair"),               # too few fields
    ("1\nAnn\t1\t2\nAnn\t2\tBob\n", 3, "mismatched pair"),            # 3 fields in the mismatched half
    ("1\nAnn\t1\tBob\t2\nAnn\t2\tBob\t1\n", 2, "matched pair"),       # mismatched line where matched expected
    ("1\nAnn\tone\t2\nAnn\t2\tBob\t1\n", 2, "integer"),
    ("1\nAnn\t0\t2\nAnn\t2\tBob\t1\n", 2, ">= 1"),
    ("1\nAnn\t1\t2\nAnn\t2\tBob\t1\nCy\t1\t2\n", 4, "extra line"),
    ("x y z\nAnn\t1\t2\n", 1, "header"),
    ("1\nAnn\t2\t2\nAnn\t2\tBob\t1\n", 2, "twice"),
    ("1\nAnn\t1\t2\nAnn\t2\tAnn\t1\n", 3, "same person"),
])
def test_malformed_line_names_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path / "pairs.txt", text)
    with pytest.raises(CnnlabError, match=message) as err:
        parse_pairs(path)
    assert f"{path}:{line}" in str(err.value)


def test_truncated_file_is_an_error(tmp_path):
    path = write(tmp_path / "pairs.txt", "2\t1\nAnn\t1\t2\nAnn\t2\tBob\t1\n")
    with pytest.raises(CnnlabError, match="promises 4 pair lines"):
        parse_pairs(path)


def test_missing_image_names_file_line_and_path(lfw_root):
    write(lfw_root / "pairsDevTest.txt", "1\nDee\t1\t2\nFay\t1\tEve\t7\n")
    with pytest.raises(CnnlabError) as err:
        parse_pairs(lfw_root / "pairsDevTest.txt", image_root=lfw_root / "lfw-deepfunneled")
    msg = str(err.value)
    assert f"{lfw_root / 'pairsDevTest.txt'}:3" in msg and "Eve/Eve_0007.jpg" in msg
    with pytest.raises(CnnlabError, match="Eve_0007"):
        LFWProtocol(lfw_root).view1()


def test_people_files_single_and_multi_set(lfw_root):
    assert parse_people(lfw_root / "peopleDevTrain.txt") == [{"Ann": 3, "Bob": 1, "Cy": 2}]
    assert parse_people(lfw_root / "people.txt") == SETS


@pytest.mark.parametrize("text, message", [
    ("2\nAnn\t3\n", "ends inside set"),
    ("1\nAnn\t3\nBob\t1\n", "extra line"),
    ("1\nAnn\t3\tx\n", "'name count'"),
    ("2\nAnn\t3\nAnn\t1\n", "listed twice"),
    ("2\n1\nAnn\t1\n", "ends before set 2"),
])
def test_malformed_people_file(tmp_path, text, message):
    with pytest.raises(CnnlabError, match=message):
        parse_people(write(tmp_path / "people.txt", text))


def test_protocol_splits_are_by_identity_and_disjoint(lfw_root):
    proto = LFWProtocol(lfw_root)
    view1 = proto.view1()
    assert set(view1.train_people) == {"Ann", "Bob", "Cy"} and set(view1.test_people) == {"Dee", "Eve", "Fay"}
    assert not set(view1.train_people) & set(view1.test_people)
    assert len(view1.test_pairs) == 2 and len(view1.train_pairs) == 2
    for fold in range(proto.num_folds):
        split = proto.view2_fold(fold)
        assert set(split.test_people) == set(SETS[fold])
        assert set(split.train_people) == set(SETS[1 - fold])
        assert not set(split.train_people) & set(split.test_people)
        assert {p.fold for p in split.test_pairs} == {fold} and len(split.test_pairs) == 4
    with pytest.raises(CnnlabError, match="fold"):
        proto.view2_fold(2)


def test_a_pair_across_the_split_is_refused(lfw_root):
    # DevTest pairs naming a DevTrain person would leak identities: refused.
    write(lfw_root / "pairsDevTest.txt", "1\nDee\t1\t2\nAnn\t1\tEve\t1\n")
    with pytest.raises(CnnlabError, match="outside the test set"):
        LFWProtocol(lfw_root).view1()


def test_people_in_two_view2_sets_are_refused(lfw_root):
    write(lfw_root / "people.txt", "2\n1\nAnn\t3\n2\nAnn\t3\nDee\t2\n")
    with pytest.raises(CnnlabError, match="listed twice"):
        LFWProtocol(lfw_root).view2_fold(0)


def test_validation_people_seeded_disjoint_and_stratified():
    names = [f"p{i}" for i in range(100)]
    counts = [1] * 60 + [3] * 40
    fit, val = split_people(names, counts, 0.2, seed=3)
    assert not set(fit) & set(val) and set(fit) | set(val) == set(names)
    assert len(val) == 20 and sum(counts[names.index(n)] >= 2 for n in val) == 8
    assert split_people(names, counts, 0.2, seed=3) == (fit, val)
    assert split_people(names, counts, 0.2, seed=4) != (fit, val)
    with pytest.raises(CnnlabError):
        split_people(names, counts, 1.0, seed=0)


def test_protocol_validation_people_come_from_view1_train(lfw_root):
    fit, val = LFWProtocol(lfw_root).validation_people(fraction=0.5, seed=0)
    assert set(fit) | set(val) == {"Ann", "Bob", "Cy"} and not set(fit) & set(val) and val
    # A sample of people with two or more images (a smaller run), seeded.
    fit, val = LFWProtocol(lfw_root).validation_people(fraction=0.5, seed=0, limit=2)
    counts = LFWProtocol(lfw_root).view1_train_people
    assert len(fit) + len(val) == 2 and all(counts[n] >= 2 for n in fit + val)


@pytest.mark.data
def test_real_lfw_protocol():
    root = data_dir("lfw")
    proto = LFWProtocol(root)
    people = [d for d in proto.image_root.iterdir() if d.is_dir()]
    assert len(people) == 5749
    assert sum(1 for d in people for f in d.iterdir() if f.suffix == ".jpg") == 13233
    view1 = proto.view1()   # parsing validates that every referenced image exists
    assert len(view1.train_pairs) == 2200 and len(view1.test_pairs) == 1000
    assert sum(p.same for p in view1.train_pairs) == 1100 and sum(p.same for p in view1.test_pairs) == 500
    assert not set(view1.train_people) & set(view1.test_people)
    assert len(view1.train_people) + len(view1.test_people) == 5749
    assert proto.num_folds == 10
    all_view2 = set()
    for fold in range(10):
        split = proto.view2_fold(fold)
        assert len(split.test_pairs) == 600 and sum(p.same for p in split.test_pairs) == 300
        assert not set(split.train_people) & set(split.test_people)
        all_view2 |= set(split.test_people)
    assert len(all_view2) == 5749
    for pair in view1.train_pairs + view1.test_pairs + tuple(proto.view2_pairs):
        for rel in pair.relpaths:
            assert (proto.image_root / rel).is_file()


@pytest.mark.data
def test_the_demo_preset_reads_a_fixed_sample_of_real_lfw():
    """`make demo`'s face step: 400 DevTrain people with 2+ images, the DevTest pairs' images;
    3,732 files that all exist (BENCHMARKS.md times the demo on exactly these)."""
    from cnnlab.tasks.faces import preset_config
    from cnnlab.tasks.faces.view1 import view1_files
    proto = LFWProtocol(data_dir("lfw"))
    config = preset_config("demo")
    fit, val = proto.validation_people(config.val_fraction, config.seed, config.train_people)
    assert (len(fit), len(val)) == (360, 40)
    files = view1_files(proto, config, fit + val, test=True)
    assert len(files) == 3732 and all((proto.image_root / rel).is_file() for rel in files)
    pair_images = {rel for pair in proto.view1_test_pairs for rel in pair.relpaths}
    assert len(pair_images) == 1549 and pair_images <= set(files)
    assert view1_files(proto, preset_config("cpu"), fit + val, test=True) is None  # every image
