"""Face verification training through the shared engine, on tiny synthetic identities laid
out as a fake LFW tree (protocol files included), at 32 px with a random-init Lite0."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.core.config import build_config
from cnnlab.core.errors import CnnlabError
from cnnlab.models.siamese import load_model
from cnnlab.models.utils import eval_mode
from cnnlab.pipelines import margins_with_report, view1_with_plots
from cnnlab.tasks.faces import FaceTrainConfig, cache_stage, outlier_counts, train_view1, train_view2

SIDE = 48


def person_pattern(rng: np.random.Generator) -> np.ndarray:
    """A 4 x 4 grid of random colours: what makes a synthetic person recognisable."""
    return rng.integers(0, 256, (4, 4, 3)).astype(np.float32)


def person_image(pattern: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = np.kron(pattern, np.ones((SIDE // 4, SIDE // 4, 1), np.float32))
    img = np.roll(img, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
    img = img * rng.uniform(0.8, 1.2) + rng.normal(0, 14, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_fake_lfw(root: Path, n_train: int = 16, n_test: int = 8, per_person: int = 4, singles: int = 2,
                  seed: int = 0) -> Path:
    """`root/lfw-deepfunneled/<Name>/<Name>_000N.jpg` plus View 1 and View 2 protocol files
    in the official formats; people named P00.., singles S00.."""
    rng = np.random.default_rng(seed)
    images = root / "lfw-deepfunneled"
    multi = [f"P{k:02d}" for k in range(n_train + n_test)]
    single = [f"S{k:02d}" for k in range(singles)]
    for name in multi + single:
        pattern = person_pattern(rng)
        (images / name).mkdir(parents=True)
        for n in range(1, (per_person if name in multi else 1) + 1):
            Image.fromarray(person_image(pattern, rng)).save(images / name / f"{name}_{n:04d}.jpg", quality=95)
    train, test = multi[:n_train] + single, multi[n_train:]

    def people_file(names):
        return f"{len(names)}\n" + "".join(f"{n} {per_person if n in multi else 1}\n" for n in names)

    def pairs_lines(names, count):
        names = [n for n in names if n in multi]
        matched = [f"{names[k % len(names)]} 1 {2 + k % (per_person - 1)}" for k in range(count)]
        mismatched = [f"{names[k % len(names)]} 1 {names[(k + 1) % len(names)]} 2" for k in range(count)]
        return matched + mismatched

    (root / "peopleDevTrain.txt").write_text(people_file(train))
    (root / "peopleDevTest.txt").write_text(people_file(test))
    (root / "pairsDevTrain.txt").write_text("6\n" + "\n".join(pairs_lines(train, 6)) + "\n")
    (root / "pairsDevTest.txt").write_text("8\n" + "\n".join(pairs_lines(test, 8)) + "\n")
    folds = np.array_split(np.array(multi), 10)
    (root / "people.txt").write_text("10\n" + "".join(
        f"{len(f)}\n" + "".join(f"{n} {per_person}\n" for n in f) for f in folds))
    (root / "pairs.txt").write_text("10 2\n" + "".join("\n".join(pairs_lines(list(f), 2)) + "\n" for f in folds))
    return root


@pytest.fixture(scope="module")
def fake_lfw(tmp_path_factory) -> Path:
    return make_fake_lfw(tmp_path_factory.mktemp("lfw"))


def tiny_config(**overrides) -> FaceTrainConfig:
    values = dict(weights="none", input_size=32, crop=SIDE, embedding_dim=16, batch_size=16, k=2, epochs=3,
                  lr=3e-3, weight_decay=1e-4, val_fraction=0.25, val_pairs=20, trainable_stages=3,
                  device="cpu", progress=False, eval_batch_size=64,
                  # Synthetic faces have no landmarks to find; the tiny runs keep the random pairs
                  # and single-image embeddings their assertions were made for (the aligned
                  # step, the hard miner and flip TTA have their own tests).
                  align=False, miner="random", flip_tta=False)
    values.update(overrides)
    return FaceTrainConfig(**values)


def quiet(_message: str) -> None:
    pass


def test_config_validation_and_build_config_from_yaml_and_flags():
    config = build_config(FaceTrainConfig, {"lr": 0.01, "batch_size": 32}, {"margin": 2.0, "lr": None})
    assert (config.lr, config.batch_size, config.margin, config.people_per_batch) == (0.01, 32, 2.0, 8)
    # The tuner's search space names are fields of this config.
    names = {f.name for f in dataclasses.fields(FaceTrainConfig)}
    assert {"lr", "batch_size", "embedding_dim", "margin", "weight_decay", "freeze_epochs"} <= names
    for bad in ({"margin": 0}, {"k": 1}, {"batch_size": 4, "k": 4}, {"distance": "manhattan"},
                {"cache_frozen_features": "maybe"}, {"optimizer": "lbfgs"}):
        with pytest.raises(CnnlabError):
            build_config(FaceTrainConfig, bad)


def test_saved_recipe_reads_missing_fields_as_defaults_and_names_the_file_it_refuses(tmp_path):
    from cnnlab.core.files import save_yaml
    from cnnlab.tasks.faces.config import saved_recipe
    recipe = FaceTrainConfig(lr=0.01, margin=2.0)
    path = tmp_path / "faces_config.yaml"
    save_yaml(recipe, path)
    assert saved_recipe(path) == recipe
    # A recipe saved before a field existed reads as that field's default.
    path.write_text("lr: 0.01\nmargin: 2.0\n")
    assert saved_recipe(path) == recipe
    for bad in ("no_such_field: 1\n", "margin: 0\n", "", "margin: [\n"):
        path.write_text(bad)
        with pytest.raises(CnnlabError, match="faces_config.yaml") as caught:
            saved_recipe(path)
        assert str(caught.value).count(str(path)) == 1, caught.value


def test_model_and_engine_configs_are_built_from_the_shared_fields():
    from cnnlab.models.siamese import SiameseConfig
    from cnnlab.training.engine import TrainConfig
    # Model defaults are SiameseConfig's (the recipe only changes the input size)...
    assert FaceTrainConfig().model_config() == SiameseConfig(input_size=192, flip_tta=True)
    # ...and every field shared by name reaches the model's and the engine's config.
    changed = dict(backbone="efficientnet_b0", weights="none", embedding_dim=32, head="mlp", normalize=False,
                   flip_tta=True, input_size=64, epochs=3, batch_size=24, lr=0.02, optimizer="sgd", weight_decay=0.0,
                   schedule="constant", warmup=0.0, seed=5, device="cpu", precision="fp32", progress=True)
    config = FaceTrainConfig(**changed)
    for sub, cls in ((config.model_config(), SiameseConfig), (config.train_config(), TrainConfig)):
        shared = {f.name for f in dataclasses.fields(cls)} & set(changed)
        assert shared and all(getattr(sub, name) == changed[name] for name in shared), cls.__name__
    assert {f.name for f in dataclasses.fields(SiameseConfig)} & {f.name for f in dataclasses.fields(FaceTrainConfig)} \
        == {"backbone", "weights", "embedding_dim", "head", "normalize", "input_size", "flip_tta"}


def test_embedding_helpers_restore_the_models_mode():
    from cnnlab.models.siamese import SiameseNet
    from cnnlab.tasks.faces import backbone_features, embed_images
    model = SiameseNet.from_config(tiny_config().model_config())
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    for training in (True, False):
        model.train(training)
        assert embed_images(model, images, batch_size=2).shape == (5, 16)
        assert backbone_features(model, images, batch_size=2).shape == (5, 1280)
        assert model.training == training
    # No images: empty arrays of the right width, so callers can stack them with others.
    assert embed_images(model, images[:0]).shape == (0, 16)
    assert backbone_features(model, images[:0]).shape == (0, 1280)


def test_feature_memo_is_explicit_and_keeps_one_entry(tmp_path):
    from cnnlab.data.faces import FaceDataset
    from cnnlab.models.siamese import SiameseNet
    from cnnlab.tasks.faces import FeatureMemo, cached_prefix
    from cnnlab.tasks.faces.features import prefix_key
    model = SiameseNet.from_config(tiny_config().model_config())
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    dataset = FaceDataset(images, np.array([0, 0, 1, 1, 2, 2]), ["a", "b", "c"], [f"{k}.jpg" for k in range(6)],
                          tmp_path)
    rows = np.array([0, 1, 2, 3])
    kw = dict(batch_size=4, progress=False, log=quiet)
    # Without a memo nothing stays alive between runs: each call builds its own features.
    first, second = cached_prefix(model, dataset, rows, 2, **kw), cached_prefix(model, dataset, rows, 2, **kw)
    assert first is not second and torch.equal(first.features, second.features)
    memo = FeatureMemo()
    shared = cached_prefix(model, dataset, rows, 2, memo=memo, **kw)
    assert cached_prefix(model, dataset, rows, 2, memo=memo, **kw) is shared
    other = cached_prefix(model, dataset, rows, 3, memo=memo, **kw)
    assert other is not shared and memo.features is other   # one entry: the old tensor is let go
    with pytest.raises(ValueError, match="not cached"):  # row 4 is in the dataset, not in the cache
        first.gather(torch.tensor([1, 4]))
    # The same paths with other pixels (a source file edited in place) are other features.
    edited = FaceDataset(images.copy(), dataset.labels, dataset.people, dataset.paths, tmp_path)
    edited.images[0, 0, 0, 0] ^= 1
    assert prefix_key(model, 2, edited, rows) != prefix_key(model, 2, dataset, rows)
    assert prefix_key(model, 2, FaceDataset(images.copy(), dataset.labels, dataset.people, dataset.paths, tmp_path),
                      rows) == prefix_key(model, 2, dataset, rows)
    assert first.features.shape[:2] == (4, 2)               # every row, plain and mirrored
    torch.testing.assert_close(first.gather(torch.tensor([2]), torch.tensor([True]))[0],
                               model.eval().features_until(torch.from_numpy(images[2:3]).permute(0, 3, 1, 2)
                                                           .flip(3), 2)[0], rtol=1e-4, atol=1e-5)


def test_cached_prefix_path_computes_the_same_embeddings_as_embed():
    from cnnlab.models.siamese import SiameseNet
    torch.manual_seed(0)
    model = SiameseNet.from_config(tiny_config().model_config()).eval()
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    n = len(model.backbone_stages())
    with torch.no_grad():
        for start in (1, n - 3, n):
            prefix = model.features_until(x, start)
            torch.testing.assert_close(model.embed_from(start, prefix), model.embed(x), rtol=1e-4, atol=1e-5)


def test_cache_is_used_only_when_the_prefix_never_trains():
    n = 9
    assert cache_stage(tiny_config(trainable_stages=2), n) == 7
    assert cache_stage(tiny_config(trainable_stages=-1), n) == 0
    assert cache_stage(tiny_config(trainable_stages=-1, freeze_epochs=3, epochs=3), n) == n
    assert cache_stage(tiny_config(trainable_stages=2, cache_frozen_features="off"), n) == 0
    assert cache_stage(tiny_config(trainable_stages=2, shift=2), n) == 0
    with pytest.raises(CnnlabError):
        cache_stage(tiny_config(trainable_stages=-1, cache_frozen_features="on"), n)


@pytest.mark.slow
def test_view1_trains_through_the_engine_and_writes_everything(fake_lfw, tmp_path):
    out = tmp_path / "run"
    seen = []
    metrics = view1_with_plots(tiny_config(epochs=4), fake_lfw, out, evaluate_test=True,
                               report_epoch=lambda epoch, score: seen.append((epoch, score)), log=quiet)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 4 and [e for e, _ in seen] == [0, 1, 2, 3]
    # Learning, not noise: the contrastive loss falls by half (a broken gradient path, pairs or
    # labels would leave it flat), and validation people are told apart far above chance.
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert max(h["val_auc"] for h in history) > 0.8
    assert metrics["test"]["n_pairs"] == 16 and metrics["test"]["auc"] > 0.7
    for name in ("metrics.json", "model.pt", "config.yaml", "environment.json", "faces_config.yaml",
                 "distances_boxplot.png", "roc.png", "retrieval.png", "tsne.png"):
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        with Image.open(png) as img:
            img.load()
            assert img.size[0] > 300 and img.size[1] > 300
    model, extra = load_model(out / "model.pt")
    assert extra["threshold"] == pytest.approx(metrics["threshold"])
    assert extra["input_size"] == 32 and extra["crop"] == SIDE


def test_training_never_reads_the_test_pairs_without_evaluate_test(fake_lfw, tmp_path):
    import shutil
    root = tmp_path / "lfw"
    shutil.copytree(fake_lfw, root)
    for name in ("pairsDevTest.txt", "peopleDevTest.txt", "pairs.txt", "people.txt"):
        (root / name).unlink()
        (root / name).mkdir()  # unreadable as a file: any attempt to parse it fails
    metrics = train_view1(tiny_config(epochs=1), root, tmp_path / "run", evaluate_test=False, log=quiet)
    assert metrics["test"] is None and metrics["validation"]["n_pairs"] > 0
    with pytest.raises(CnnlabError):
        train_view1(tiny_config(epochs=1), root, tmp_path / "run2", evaluate_test=True, log=quiet)


def test_a_smaller_view1_reads_only_the_sampled_people_and_the_test_pairs_images(fake_lfw, tmp_path):
    """train_people + test_images=pairs (the demo preset's knobs): only those files are
    decoded, every DevTest pair is still scored, retrieval is over the pairs' images."""
    from cnnlab.data.lfw import LFWProtocol
    protocol = LFWProtocol(fake_lfw)
    pair_images = {rel for pair in protocol.view1_test_pairs for rel in pair.relpaths}
    lines = []
    config = tiny_config(epochs=1, train_people=12, test_images="pairs", val_fraction=0.25)
    metrics = train_view1(config, fake_lfw, tmp_path / "run", evaluate_test=True, log=lines.append)
    assert metrics["fit_people"] + metrics["val_people"] == 12 and metrics["fit_people"] == 9
    assert metrics["test"]["n_pairs"] == 16 and metrics["test_images"] == len(pair_images) < 8 * 4
    assert lines[0].startswith(f"{12 * 4 + len(pair_images)} images of 20 people"), lines[0]
    assert any(line.startswith("DevTest pair images retrieval") for line in lines)
    assert metrics["retrieval"]["queries"] <= len(pair_images)
    # The same seed samples the same people; View 2 refuses View 1's subsetting knobs.
    assert protocol.validation_people(0.25, 0, limit=12) == protocol.validation_people(0.25, 0, limit=12)
    with pytest.raises(CnnlabError, match="View 1 options"):
        train_view2(config, fake_lfw, tmp_path / "v2", folds=[0])
    with pytest.raises(CnnlabError, match="train_people=17 but View 1 has 16 training people"):
        protocol.validation_people(0.25, 0, limit=17)
    with pytest.raises(ValueError, match="test_images must be one of people, pairs"):
        tiny_config(test_images="some")


def test_pixel_path_with_freeze_epochs_trains_the_whole_network(fake_lfw, tmp_path):
    config = tiny_config(epochs=2, freeze_epochs=1, trainable_stages=-1, shift=2)
    metrics = train_view1(config, fake_lfw, tmp_path / "run", evaluate_test=False, log=quiet)
    assert metrics["trained_from_stage"] == 0
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2


def test_outlier_counts_by_hand():
    emb = np.array([[0, 0], [0, 0.1], [1, 0], [1, 0.1], [0, 0.05]], np.float32)
    labels = np.array([0, 0, 1, 1, 2])
    d = np.array([0.1, 0.9, 0.2, 1.5])
    same = np.array([True, True, False, False])
    out = outlier_counts(d, same, 0.5, emb, labels, "euclidean")
    assert out["same_beyond_threshold"] == 1 and out["different_within_threshold"] == 1
    # Queries are images 0-3 (person 2 has one image); 0's and 1's nearest is person 2's image.
    assert out["nn_queries"] == 4 and out["nn_other_person"] == 2
    # medians: same-person (0.1, 0.9) -> 0.5; different-person (0.2, 1.5) -> 0.85
    assert out["same_median"] == pytest.approx(0.5) and out["different_median"] == pytest.approx(0.85)
    assert out["same_to_different_median"] == pytest.approx(0.5 / 0.85)


@pytest.mark.slow
def test_margins_and_view2_on_tiny_data(fake_lfw, tmp_path):
    comparison = margins_with_report(tiny_config(epochs=1), [0.5, 1.0], fake_lfw, tmp_path / "margins", log=quiet)
    assert [r["margin"] for r in comparison["runs"]] == [0.5, 1.0]
    for name in ("comparison.json", "comparison.md", "margins_boxplots.png", "margins_tsne.png", "margins_roc.png"):
        assert (tmp_path / "margins" / name).is_file(), name
    assert "same beyond threshold" in (tmp_path / "margins" / "comparison.md").read_text()

    lines = []
    summary = train_view2(tiny_config(epochs=1, val_fraction=0.2), fake_lfw, tmp_path / "view2", folds=[0, 1],
                          log=lines.append)
    # One frozen-feature cache of every image serves all folds: computed once, not per fold.
    assert sum("computed frozen stages" in line for line in lines) == 1
    assert summary["folds_run"] == 2 and summary["num_folds"] == 10 and not summary["complete"]
    assert [f["fold"] for f in summary["folds"]] == [1, 2]
    # Each fold's row carries the retrieval its kept epoch logged (validation people's images).
    history = [json.loads(line) for line in (tmp_path / "view2" / "fold-01" / "metrics.jsonl").read_text().splitlines()]
    row = summary["folds"][0]
    assert row["val_precision_at_1"] == pytest.approx(history[row["best_epoch"] - 1]["val_p1"])
    assert (tmp_path / "view2" / "fold-02" / "model.pt").is_file()
    assert json.loads((tmp_path / "view2" / "metrics.json").read_text())["folds_run"] == 2
    assert 0.0 <= summary["accuracy"]["mean"] <= 1.0

    # Resuming: finished folds are kept (not retrained), the new one is added, the summary
    # covers all three; another recipe in the same folder is refused and deletes nothing.
    first_rows = summary["folds"]
    lines.clear()
    again = train_view2(tiny_config(epochs=1, val_fraction=0.2), fake_lfw, tmp_path / "view2", folds=[1, 2],
                        log=lines.append)
    assert any("keeping fold(s) 1, 2 finished earlier" in line for line in lines)
    assert sum(line.startswith("[fold ") for line in lines) == 1          # only fold 3 trained
    assert [f["fold"] for f in again["folds"]] == [1, 2, 3] and again["folds"][:2] == first_rows
    with pytest.raises(CnnlabError, match="another recipe .*differs in margin"):
        train_view2(tiny_config(epochs=1, val_fraction=0.2, margin=2.0), fake_lfw, tmp_path / "view2", folds=[3])
    assert json.loads((tmp_path / "view2" / "metrics.json").read_text())["folds_run"] == 3
    with pytest.raises(CnnlabError, match="holds a view1 run"):
        (tmp_path / "v1").mkdir()
        (tmp_path / "v1" / "metrics.json").write_text('{"protocol": "view1"}')
        train_view2(tiny_config(epochs=1, val_fraction=0.2), fake_lfw, tmp_path / "v1", folds=[0])


def test_untrained_baseline_scores_devtest_with_a_validation_threshold(fake_lfw, tmp_path):
    from cnnlab.tasks.faces import untrained_baseline
    result = untrained_baseline(tiny_config(), fake_lfw, tmp_path, log=quiet)
    saved = json.loads((tmp_path / "baseline.json").read_text())
    assert saved["test"]["n_pairs"] == 16 and saved["test"]["threshold_source"] == "calibrated"
    assert saved["test"]["threshold"] == pytest.approx(result["validation"]["threshold"])


@pytest.mark.slow
def test_validation_measures_retrieval_over_the_validation_peoples_images(fake_lfw, tmp_path):
    """Pair AUC cannot see retrieval (the default chosen on it lost 8 points of DevTest
    precision@1): each epoch also records leave-one-out precision@1 over every image of the
    validation people, and metrics.json the kept epoch's, equal to retrieval by the saved model."""
    from cnnlab.data.faces import load_identity_folders
    from cnnlab.data.lfw import LFWProtocol
    from cnnlab.metrics.retrieval import retrieval_scores
    from cnnlab.models.siamese import load_model
    from cnnlab.tasks.faces import embed_images, train_view1
    config = tiny_config(epochs=2)
    lines = []
    metrics = train_view1(config, fake_lfw, tmp_path / "run", evaluate_test=False, log=lines.append)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    kept = metrics["validation_retrieval"]
    assert kept["precision_at_1"] == pytest.approx(history[metrics["best_epoch"] - 1]["val_p1"])
    assert any("precision@1" in line for line in lines if line.startswith("epoch 2/2: val AUC"))
    _, val_people = LFWProtocol(fake_lfw).validation_people(config.val_fraction, config.seed)
    dataset, _ = load_identity_folders(fake_lfw / "lfw-deepfunneled", config.preprocess(), progress=False)
    rows = dataset.indices_of_people(val_people)
    model, _ = load_model(tmp_path / "run" / "model.pt")
    expected = retrieval_scores(embed_images(model, dataset.images[rows]), dataset.labels[rows], config.distance)
    assert kept["queries"] == expected["queries"] > 0
    assert kept["precision_at_1"] == pytest.approx(expected["precision_at_1"], abs=1 / expected["queries"])
    assert kept["map_at_r"] == pytest.approx(expected["map_at_r"], abs=0.02)


@pytest.mark.slow
def test_hard_miner_and_flip_tta_train_and_report_retrieval(fake_lfw, tmp_path):
    from cnnlab.models.siamese import load_model
    from cnnlab.tasks.faces import train_view1
    from cnnlab.tasks.faces.task import FaceVerificationTask
    config = tiny_config(epochs=2, miner="hard", miner_negatives=2, flip_tta=True)
    metrics = train_view1(config, fake_lfw, tmp_path / "run", evaluate_test=True, log=quiet)
    r = metrics["retrieval"]
    assert r["queries"] > 0 and 0 <= r["map_at_r"] <= r["r_precision"] <= 1 and 0 <= r["precision_at_1"] <= 1
    model, _ = load_model(tmp_path / "run" / "model.pt")
    assert model.config.flip_tta
    # Validation from cached features (the mirror's own cached features) = from pixels (`embed`).
    from cnnlab.data.faces import load_identity_folders
    from cnnlab.tasks.faces import cached_prefix, embed_images
    dataset, _ = load_identity_folders(fake_lfw / "lfw-deepfunneled", config.preprocess(), progress=False)
    rows = np.arange(len(dataset))
    stage = len(model.backbone_stages()) - config.trainable_stages
    prefix = cached_prefix(model, dataset, rows, stage, batch_size=64, progress=False, log=quiet)
    task = FaceVerificationTask(config, dataset, rows, rows, torch.device("cpu"), prefix=prefix, start_stage=stage)
    assert isinstance(task.miner, __import__("cnnlab.metric_learning.miners", fromlist=["HardPairMiner"]).HardPairMiner)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(task.val_embeddings(model), torch.from_numpy(embed_images(model, dataset.images)),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tta", [False, True])
def test_embeddings_from_cached_prefix_features_equal_embeddings_from_pixels(tta):
    """View 2 scores each fold from the cached frozen features; validation does too."""
    from cnnlab.data.faces import FaceDataset
    from cnnlab.models.siamese import SiameseNet
    from cnnlab.tasks.faces import cached_prefix, embed_images
    from cnnlab.tasks.faces.features import embed_from_prefix
    torch.manual_seed(0)
    model = SiameseNet.from_config(tiny_config(flip_tta=tta).model_config()).eval()
    images = np.random.default_rng(1).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    dataset = FaceDataset(images, np.array([0, 0, 1, 1, 2, 2, 2]), ["a", "b", "c"], [f"{k}.jpg" for k in range(7)],
                          root=Path("."))
    stage = len(model.backbone_stages()) - 2
    prefix = cached_prefix(model, dataset, np.arange(7), stage, batch_size=3, progress=False, log=quiet)
    rows = np.array([6, 0, 3])
    with torch.no_grad():
        cached = embed_from_prefix(model, prefix, rows, batch_size=2)
    torch.testing.assert_close(cached, torch.from_numpy(embed_images(model, images[rows])), rtol=1e-4, atol=1e-5)


def test_each_frozen_prefix_is_computed_once_per_value_across_trials(tmp_path, monkeypatch):
    """Tuning trainable_stages moves the frozen prefix: each value's features are computed once
    (then read from the disk cache), whatever order the trials come in."""
    from cnnlab.data.faces import FaceDataset
    from cnnlab.models.siamese import SiameseNet
    from cnnlab.tasks.faces import FeatureMemo, cache_stage, cached_prefix
    from cnnlab.tasks.faces.features import PrefixFeatures
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    computed = []
    real = PrefixFeatures.compute

    def counting(model, images, rows, stage, **kw):
        computed.append(stage)
        return real(model, images, rows, stage, **kw)

    monkeypatch.setattr(PrefixFeatures, "compute", staticmethod(counting))
    model = SiameseNet.from_config(tiny_config().model_config())
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    dataset = FaceDataset(images, np.array([0, 0, 1, 1, 2, 2]), ["a", "b", "c"], [f"{k}.jpg" for k in range(6)],
                          tmp_path)
    memo, num_stages = FeatureMemo(), len(model.backbone_stages())
    stages = [cache_stage(tiny_config(trainable_stages=t), num_stages) for t in (3, 4, 3, 4, 3)]
    assert len(set(stages)) == 2  # two values, two different frozen prefixes
    for stage in stages:
        cached_prefix(model, dataset, np.arange(6), stage, batch_size=4, progress=False, log=quiet, memo=memo)
    assert sorted(computed) == sorted(set(stages))


def test_frozen_features_do_not_depend_on_the_batch_size_and_keep_their_shape_when_empty():
    from cnnlab.models.siamese import SiameseNet
    from cnnlab.tasks.faces.features import PrefixFeatures
    model = SiameseNet.from_config(tiny_config().model_config())
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    rows = np.array([0, 2, 4])
    whole = PrefixFeatures.compute(model, images, rows, 4, batch_size=3)
    assert whole.shape[:2] == (3, 2)  # each row and its mirror image
    assert torch.allclose(PrefixFeatures.compute(model, images, rows, 4, batch_size=2), whole, atol=1e-6)
    assert PrefixFeatures.compute(model, images, rows[:0], 4).shape == (0, *whole.shape[1:])


@pytest.mark.parametrize("loss", ["cosface", "arcface"])
def test_margin_softmax_losses_train_through_view1_and_checkpoint_their_class_weights(fake_lfw, tmp_path, loss):
    config = tiny_config(epochs=4, loss=loss, class_scale=16.0)
    metrics = train_view1(config, fake_lfw, tmp_path / "run", evaluate_test=False, log=quiet)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert max(h["val_auc"] for h in history) > 0.6  # chance is 0.5; tiny random-init data is noisy
    weight = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["loss"]["weight"]
    # One class per training person a batch can draw: the 14 training people less the 2 with
    # a single image.
    assert metrics["fit_people"] == 14 and tuple(weight.shape) == (12, config.embedding_dim)
    with pytest.raises(ValueError, match="needs normalize=true"):
        tiny_config(loss=loss, normalize=False)
    with pytest.raises(ValueError, match="class_init must be one of imprint, random"):
        tiny_config(loss=loss, class_init="zeros")
    with pytest.raises(ValueError, match="loss must be one of"):
        tiny_config(loss="triplet")


def test_subcenter_arcface_trains_k_vectors_per_person_imprinted_apart(fake_lfw, tmp_path, monkeypatch):
    from cnnlab.tasks.faces import training
    started, fit = {}, training.Engine.fit

    def record(engine, model, task, **kw):  # the class vectors as training starts
        started["weight"] = task.classes.weight.detach().clone()
        return fit(engine, model, task, **kw)

    monkeypatch.setattr(training.Engine, "fit", record)
    lines = []
    config = tiny_config(epochs=2, loss="arcface", class_scale=16.0, class_subcenters=2)
    train_view1(config, fake_lfw, tmp_path / "run", evaluate_test=False, log=lines.append)
    assert any("arcface: 12 x 2 sub-centers class vectors imprinted" in line for line in lines)
    weight = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["loss"]["weight"]
    assert tuple(weight.shape) == tuple(started["weight"].shape) == (12 * 2, config.embedding_dim)
    # Every drawable person has two or more images, so each sub-center started at images of its
    # own: no person's two vectors start equal.
    gap = (started["weight"][0::2] - started["weight"][1::2]).norm(dim=1)
    assert bool((gap > 1e-3).all())
    with pytest.raises(ValueError, match="class_subcenters=2 has no effect with loss=contrastive"):
        tiny_config(class_subcenters=2)
    with pytest.raises(ValueError, match="class_subcenters must be >= 1"):
        tiny_config(loss="arcface", class_subcenters=0)


@pytest.mark.parametrize("loss", ["contrastive", "cosface"])
def test_single_image_people_train_as_impostors_only_when_asked(fake_lfw, tmp_path, loss):
    lines = []
    config = tiny_config(epochs=1, loss=loss, class_scale=16.0, singles_per_batch=2)
    train_view1(config, fake_lfw, tmp_path / "with", evaluate_test=False, log=lines.append)
    # Their frozen features are cached with the rest (the batches gather them from the cache).
    assert any("8x2 + 2 single-image people per epoch, from cached stage" in line for line in lines)
    if loss == "cosface":  # every training person a class, the 2 single-image ones too
        weight = torch.load(tmp_path / "with" / "checkpoint.pt", weights_only=True)["loss"]["weight"]
        assert tuple(weight.shape) == (14, config.embedding_dim)
    lines.clear()
    train_view1(tiny_config(epochs=1, loss=loss, class_scale=16.0), fake_lfw, tmp_path / "without",
                evaluate_test=False, log=lines.append)
    assert any("the 2 people with one image are never drawn (--singles-per-batch)" in line for line in lines)
    with pytest.raises(ValueError, match="singles_per_batch must be >= 0"):
        tiny_config(singles_per_batch=-1)


@pytest.mark.parametrize("class_init", ["imprint", "random"])
def test_class_vectors_start_imprinted_from_the_starting_network_or_random(fake_lfw, tmp_path, monkeypatch,
                                                                          class_init):
    from cnnlab.tasks.faces import training
    started = {}
    fit = training.Engine.fit

    def record(engine, model, task, **kw):  # the class vectors as training starts
        started["weight"] = task.classes.weight.detach().clone()
        started["imprinted"] = torch.nn.functional.normalize(torch.stack([
            torch.nn.functional.normalize(z, dim=1).mean(0) for z in per_class(model, task)]), dim=1)
        return fit(engine, model, task, **kw)

    def per_class(model, task):
        classes = task.class_of[task.train_labels]
        drawn = classes >= 0  # single-image people are not classes (their features are not cached)
        classes = classes[drawn]
        with torch.no_grad(), eval_mode(model):
            z = task.embed_rows(model, task.train_rows[drawn])
        return [z[classes == c] for c in range(len(task.classes.weight))]

    monkeypatch.setattr(training.Engine, "fit", record)
    lines = []
    train_view1(tiny_config(epochs=1, loss="cosface", class_init=class_init), fake_lfw, tmp_path / "run",
                evaluate_test=False, log=lines.append)
    close = torch.allclose(started["weight"], started["imprinted"], atol=1e-5)
    assert close == (class_init == "imprint")
    assert any("12 class vectors imprinted" in line for line in lines) == (class_init == "imprint")
