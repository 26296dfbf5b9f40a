"""Identity-labelled collections as they are kept on disk (`cnnlab.data.identities`): CelebA's
official layout and identity folders read into people and images; the `celeba:`/`folders:`
source forms; bad layouts as one-line errors; `merge_datasets` keeps LFW's rows as they were."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.core.errors import CnnlabError
from cnnlab.data.faces import FaceDataset, FacePreprocess, load_identity_folders, merge_datasets
from cnnlab.data.identities import IdentitySource, load_source, scan_celeba
from face_models import make_gallery
from test_faces_train import SIDE, person_image, person_pattern

CROP = FacePreprocess(crop=SIDE, size=32)


def make_fake_celeba(root: Path, people: int = 12, per_person: int = 3, singles: int = 2, first_id: int = 100,
                     seed: int = 3, unlisted: int = 0, missing: int = 0) -> Path:
    """CelebA's layout: `img_align_celeba/NNNNNN.jpg` (people interleaved, as CelebA's numbering
    is) and `identity_CelebA.txt`; `unlisted` images the file does not name, `missing` lines
    naming images the folder lacks."""
    rng = np.random.default_rng(seed)
    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    ids = [first_id + p for p in range(people) for _ in range(per_person)]
    ids += [first_id + people + s for s in range(singles)]
    ids = [ids[i] for i in rng.permutation(len(ids))]
    patterns = {i: person_pattern(rng) for i in set(ids)}
    lines = []
    for n, identity in enumerate(ids, start=1):
        Image.fromarray(person_image(patterns[identity], rng)).save(images / f"{n:06d}.jpg", quality=95)
        lines.append(f"{n:06d}.jpg {identity}")
    for k in range(unlisted):
        Image.fromarray(person_image(person_pattern(rng), rng)).save(images / f"{len(ids) + 1 + k:06d}.jpg")
    lines += [f"{900000 + k:06d}.jpg {first_id}" for k in range(missing)]
    (root / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
    return root


def test_source_forms():
    assert IdentitySource.parse("celeba:/data/celeba") == IdentitySource("celeba", Path("/data/celeba"))
    assert IdentitySource.parse("folders:att") == IdentitySource("folders", Path("att"))
    assert IdentitySource.parse("/data/att-faces").kind is None         # detected when loaded
    assert IdentitySource.parse("C:\\faces").root == Path("C:\\faces")  # not a kind: part of the path
    for bad in ("celeba:", "", "folders:  "):
        with pytest.raises(CnnlabError, match="names no folder"):
            IdentitySource.parse(bad)


def test_a_celeba_layout_is_read_into_its_people_and_images(tmp_path):
    root = make_fake_celeba(tmp_path / "celeba", people=5, per_person=3, singles=2, unlisted=1, missing=2)
    assert IdentitySource.parse(str(root)).resolved().kind == "celeba"
    scan = scan_celeba(root)
    assert len(scan.files) == 17 and scan.listed_missing == 2  # the unlisted image is no one's
    assert all(rel.startswith("img_align_celeba/") for _, rel in scan.files)
    loaded = load_source(str(root), CROP)
    data = loaded.dataset
    assert data.people == [str(i) for i in range(100, 107)]
    assert sorted(data.images_per_person().tolist()) == [1, 1, 3, 3, 3, 3, 3]
    assert data.images.shape == (17, 32, 32, 3)
    record = loaded.record()
    assert (record["kind"], record["people"], record["people_2plus"], record["images"],
            record["listed_missing"]) == ("celeba", 7, 5, 17, 2)


def test_identity_folders_are_read_and_detected(tmp_path):
    root = make_gallery(tmp_path / "gallery", people=4, per_person=3)
    for form in (str(root), f"folders:{root}"):
        loaded = load_source(form, CROP)
        assert loaded.source.kind == "folders"
        assert loaded.dataset.people == ["person00", "person01", "person02", "person03"]
        assert len(loaded.dataset) == 12


def test_albums_inside_a_person_folder_are_that_persons_images(tmp_path):
    root = make_gallery(tmp_path / "gallery", people=2, per_person=2)
    album = root / "person01" / "trip 2020" / "day1"
    album.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((SIDE, SIDE, 3), 40 * i, np.uint8)).save(album / f"{i}.png")
    loaded = load_source(f"folders:{root}", CROP)
    assert loaded.dataset.people == ["person00", "person01"]      # an album never becomes a person
    assert loaded.dataset.images_per_person().tolist() == [2, 4]


def one_line_error(source: str) -> str:
    with pytest.raises(CnnlabError) as caught:
        load_source(source, CROP)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_bad_layouts_are_one_line_errors(tmp_path):
    celeba = make_fake_celeba(tmp_path / "celeba", people=2)
    (celeba / "identity_CelebA.txt").unlink()
    assert "identity_CelebA.txt" in one_line_error(f"celeba:{celeba}")
    assert "identity_CelebA.txt" in one_line_error(str(celeba))   # its image folder says CelebA
    broken = make_fake_celeba(tmp_path / "broken", people=2)
    (broken / "identity_CelebA.txt").write_text("000001.jpg 100\n000002.jpg\n")
    assert "identity_CelebA.txt:2" in one_line_error(str(broken))
    flat = tmp_path / "flat"   # images but no person folders
    flat.mkdir()
    Image.fromarray(np.zeros((SIDE, SIDE, 3), np.uint8)).save(flat / "a.png")
    assert "no image files found" in one_line_error(f"folders:{flat}")
    assert "not found" in one_line_error(str(tmp_path / "nowhere"))
    nothing = tmp_path / "empty-celeba"
    (nothing / "img_align_celeba").mkdir(parents=True)
    (nothing / "identity_CelebA.txt").write_text("000001.jpg 1\n")
    assert "none of the 1 images" in one_line_error(str(nothing))


def test_merge_keeps_the_first_dataset_and_renames_the_others(tmp_path):
    lfw = make_gallery(tmp_path / "lfw", people=3, per_person=2)
    base, _ = load_identity_folders(lfw, CROP)
    other = load_source(str(make_fake_celeba(tmp_path / "celeba", people=2, singles=0)), CROP).dataset
    merged = merge_datasets(base, [("celeba", other)])
    assert merged.people[:3] == base.people and merged.people[3:] == ["celeba/100", "celeba/101"]
    assert np.array_equal(merged.images[:len(base)], base.images) and merged.paths[:len(base)] == base.paths
    assert merged.root == base.root and Path(merged.root / merged.paths[-1]).is_file()  # absolute paths
    assert merged.index_of("person01", 1) == base.index_of("person01", 1)
    assert len(merged.indices_of_people(["celeba/100"])) == 3
    small = FaceDataset(np.zeros((1, 8, 8, 3), np.uint8), [0], ["x"], ["x/1.png"], tmp_path)
    with pytest.raises(CnnlabError, match="one face step"):
        merge_datasets(base, [("small", small)])
