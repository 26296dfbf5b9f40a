import pytest
import torch
import torch.nn as nn

from cnnlab.core.errors import CnnlabError
from cnnlab.metric_learning.distances import EuclideanDistance
from cnnlab.metric_learning.losses import ContrastiveLoss
from cnnlab.models.backbones import BACKBONES, create_backbone
from cnnlab.models.siamese import SiameseConfig, SiameseNet, load_model, save_model, search, verify

SIZE = 32


def tiny(**options) -> SiameseNet:
    """Random-init Lite0 at 32 px: the real architecture, at a test's speed."""
    options = {"weights": "none", "embedding_dim": 8, "input_size": SIZE, **options}
    return SiameseNet("tf_efficientnet_lite0", **options)


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_one_backbone_shared_by_both_branches():
    model = tiny()
    backbone, _ = create_backbone("tf_efficientnet_lite0", "none")
    head_params = 1280 * 8 + 8
    assert count(model) == count(backbone) + head_params
    assert count(model.head) == head_params

    a, b = images(4, seed=1), images(4, seed=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    za, zb = model(a, b)
    ContrastiveLoss(margin=1.0)(za, zb, torch.tensor([1, 0, 1, 0])).backward()
    optimizer.step()
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
    # After the step, one image through "branch a" and "branch b" is still the same embedding.
    model.eval()
    with torch.no_grad():
        za, zb = model(a, a)
        torch.testing.assert_close(za, zb, rtol=0, atol=0)
        torch.testing.assert_close(model.embed(a), za, rtol=1e-5, atol=1e-6)


def test_embed_shapes_normalisation_and_input_scaling():
    model = tiny().eval()
    x = images(3)
    with torch.no_grad():
        z = model.embed(x)
        assert z.shape == (3, 8)
        torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
        # uint8 input is scaled to [0, 1] first
        x8 = (x * 255).round().to(torch.uint8)
        torch.testing.assert_close(model.embed(x8), model.embed(x8.float() / 255))
        # the backbone's own normalisation (Lite0: mean = std = 0.5) is applied inside
        torch.testing.assert_close(model.forward_features(x), model.backbone((x - 0.5) / 0.5))
        raw = tiny(normalize=False).eval().embed(x)
        assert not torch.allclose(raw.norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        model.embed(torch.rand(3, SIZE, SIZE))


def test_data_config_follows_backbone_and_input_size():
    model = tiny()
    assert model.data_config.mean == (0.5, 0.5, 0.5)
    assert model.data_config.input_size == SIZE
    assert SiameseNet("efficientnet_b0", weights="none").data_config.input_size == 224


def test_mlp_head_and_invalid_options():
    model = tiny(head="mlp", hidden_dim=16, dropout=0.1)
    assert count(model.head) == 1280 * 16 + 16 + 16 * 8 + 8
    assert model.eval().embed(images(2)).shape == (2, 8)
    with pytest.raises(CnnlabError, match="unknown projection head 'conv'"):
        tiny(head="conv")
    with pytest.raises(CnnlabError, match="dropout"):
        tiny(dropout=1.0)
    with pytest.raises(CnnlabError, match="embedding_dim"):
        tiny(embedding_dim=0)


def _bn_layers(module: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def test_frozen_backbone_keeps_its_batchnorm_in_eval_mode():
    model = tiny()
    model.freeze_backbone(True)
    assert model.backbone_frozen
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model.train()
    assert model.training and model.head.training
    assert not any(bn.training for bn in _bn_layers(model.backbone))
    stats = [bn.running_mean.clone() for bn in _bn_layers(model.backbone)]
    za, zb = model(images(4, 1), images(4, 2))
    ContrastiveLoss()(za, zb, torch.tensor([1, 0, 1, 0])).backward()
    assert all(torch.equal(bn.running_mean, s) for bn, s in zip(_bn_layers(model.backbone), stats))
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())

    model.freeze_backbone(False)
    model.train()
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert all(bn.training for bn in _bn_layers(model.backbone))


def test_partial_freeze_trains_only_the_last_stages():
    model = tiny()
    model.freeze_backbone(True, trainable_stages=2)  # last block stage + the 1x1 head conv
    model.train()
    b = model.backbone
    assert not any(p.requires_grad for p in b.conv_stem.parameters())
    assert not any(p.requires_grad for p in b.blocks[:-1].parameters())
    assert all(p.requires_grad for p in b.blocks[-1].parameters())
    assert all(p.requires_grad for p in b.conv_head.parameters())
    assert not b.bn1.training and b.bn2.training
    with pytest.raises(ValueError, match="trainable_stages"):
        model.freeze_backbone(True, trainable_stages=99)


def test_save_and_load_roundtrip(tmp_path):
    model = tiny(head="mlp", hidden_dim=16).eval()
    path = tmp_path / "model.pt"
    save_model(model, path, extra={"threshold": 0.7})
    loaded, extra = load_model(path)
    assert extra == {"threshold": 0.7}
    assert loaded.config == model.config and not loaded.training
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed(x), model.embed(x))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CnnlabError, match="cannot read model file"):
        load_model(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CnnlabError, match="not a cnnlab Siamese model"):
        load_model(tmp_path / "other.pt")


def test_from_config_rebuilds_the_architecture():
    config = SiameseConfig(backbone="lite0", embedding_dim=4, weights="none", input_size=SIZE)
    assert config.backbone == "tf_efficientnet_lite0"
    model = SiameseNet.from_config(config)
    assert model.embedding_dim == 4 and model.config == config


def test_verify_thresholds_the_embedding_distance():
    model = tiny()
    model.train()
    a, b = images(4, 1), images(4, 2)
    b[0] = a[0]
    with torch.no_grad():
        expected = EuclideanDistance().paired(model.eval().embed(a), model.embed(b))
    model.train()
    threshold = float(expected[1:].median())
    d, same = verify(model, a, b, threshold)
    assert model.training  # the caller's mode is restored
    torch.testing.assert_close(d, expected)
    assert same.tolist() == (expected <= threshold).tolist()
    assert same[0] and d[0] < 1e-5
    d1, same1 = verify(model, a[2], b[2], threshold)
    assert isinstance(d1, float) and isinstance(same1, bool)
    assert d1 == pytest.approx(float(expected[2]), abs=1e-6) and same1 == bool(expected[2] <= threshold)


def test_search_returns_nearest_gallery_entries_first():
    model = tiny().eval()
    gallery = images(12, 3)
    with torch.no_grad():
        gallery_embeddings = model.embed(gallery)
    distances, indices = search(model, gallery_embeddings, gallery[[3, 7]], k=4)
    assert indices.shape == distances.shape == (2, 4)
    assert indices[:, 0].tolist() == [3, 7]
    assert (distances[:, 0] < 1e-3).all()
    assert (distances[:, 1:] >= distances[:, :-1]).all()
    full = EuclideanDistance().compute_mat(gallery_embeddings[[3, 7]], gallery_embeddings)
    torch.testing.assert_close(distances, full.sort(dim=1).values[:, :4], atol=1e-5, rtol=1e-5)
    _, single = search(model, gallery_embeddings, gallery[5], k=1)
    assert single.tolist() == [[5]]
    with pytest.raises(ValueError, match="k must be"):
        search(model, gallery_embeddings, gallery[0], k=13)


def test_built_from_a_config_or_keywords_with_the_configs_defaults():
    # The defaults live in SiameseConfig only: a network built from keywords, from a config and
    # from nothing but its required choices agree with it.
    config = SiameseConfig(weights="none", embedding_dim=8, input_size=SIZE)
    by_config, by_keywords = SiameseNet(config), tiny()
    assert by_config.config == by_keywords.config == config
    assert by_config.config is not config  # the model's copy; a caller's later edits do not leak in
    assert SiameseNet(config, head="mlp", hidden_dim=16).config == SiameseConfig(
        weights="none", embedding_dim=8, input_size=SIZE, head="mlp", hidden_dim=16)
    assert SiameseNet(weights="none").config == SiameseConfig(weights="none")
    assert SiameseNet(backbone_name="lite0", weights="none").config.backbone == SiameseConfig.backbone
    with pytest.raises(CnnlabError, match="invalid SiameseNet option"):
        SiameseNet(config, colour="blue")


@pytest.mark.parametrize("normalize", [True, False])
def test_the_staged_forward_pass_is_embed_split_anywhere(normalize):
    # Training from cached features runs features_until once and embed_from every step: the
    # two halves must be exactly `embed`, wherever they are split.
    model = tiny(normalize=normalize).eval()
    x = (images(3) * 255).round().to(torch.uint8)
    n = len(model.backbone_stages())
    with torch.no_grad():
        z = model.embed(x)
        torch.testing.assert_close(model.embed_from(0, x), z)
        for stage in range(1, n + 1):
            features = model.features_until(x, stage)
            torch.testing.assert_close(model.embed_from(stage, features), z, rtol=1e-4, atol=1e-5)
        assert model.features_until(x, 0).shape == (3, 3, SIZE, SIZE)  # stage 0: the normalised input
        torch.testing.assert_close(model.features_until(x, 0), model.prepare_input(x))


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_trains_its_last_4_stages_from_frozen_prefix_features(name):
    # The default face recipe (trainable_stages=4) caches the frozen prefix once, as uint8
    # channels-last batches, then trains the rest from those features.
    model = SiameseNet(name, weights="none", embedding_dim=8, input_size=64)
    model.freeze_backbone(True, trainable_stages=4)
    stages = model.backbone_stages()
    prefix = len(stages) - 4
    x = (torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    x = x.contiguous(memory_format=torch.channels_last)
    model.eval()
    with torch.no_grad():
        features = model.features_until(x, prefix)
        torch.testing.assert_close(model.embed_from(prefix, features), model.embed(x), rtol=1e-4, atol=1e-5)
    model.train()
    model.embed_from(prefix, features).sum().backward()
    assert all(p.grad is None for stage in stages[:prefix] for p in stage.parameters())
    assert all(p.grad is not None for stage in stages[prefix:] for p in stage.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


def test_flip_tta_embeds_an_image_and_its_mirror_in_eval_mode_only():
    torch.manual_seed(0)
    plain = SiameseNet(weights="none", input_size=32, embedding_dim=8).eval()
    tta = SiameseNet(weights="none", input_size=32, embedding_dim=8, flip_tta=True).eval()
    tta.load_state_dict(plain.state_dict())
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(plain.embed(x) + plain.embed(x.flip(3)), dim=1)
        torch.testing.assert_close(tta.embed(x), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(tta.embed(x.flip(3)), tta.embed(x), rtol=1e-5, atol=1e-6)  # mirror-invariant
        tta.train()
        torch.testing.assert_close(tta.embed(x), plain.train().embed(x))  # training sees single images


def test_in_batches_concatenates_slices_of_tensors_and_arrays():
    import numpy as np

    from cnnlab.models.utils import in_batches
    seen = []

    def fn(s):
        seen.append((s.start, s.stop))
        return torch.arange(s.start, s.stop)

    assert torch.equal(in_batches(fn, 7, 3, empty=None), torch.arange(7)) and seen == [(0, 3), (3, 6), (6, 7)]
    assert np.array_equal(in_batches(lambda s: np.arange(10)[s], 10, 4, empty=None), np.arange(10))
    assert in_batches(fn, 0, 3, empty="nothing") == "nothing"
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        in_batches(fn, 3, 0, empty=None)
