import json
import sys

import numpy as np
import onnx
import pytest
import torch

from cnnlab.core.errors import CnnlabError
from cnnlab.models.siamese import SiameseNet
from cnnlab.verifier.export import export_onnx, run_onnx, write_export_metadata

SIZE = 32


@pytest.fixture(scope="module")
def model():
    return SiameseNet("tf_efficientnet_lite0", embedding_dim=8, weights="none", input_size=SIZE,
                      head="mlp", hidden_dim=16)


def test_export_matches_pytorch_with_a_dynamic_batch(model, tmp_path):
    model.train()  # export must embed in eval mode and give the caller's mode back
    report = export_onnx(model, tmp_path / "faces.onnx")
    assert model.training
    assert report.path.is_file() and report.input_size == SIZE and report.max_abs_diff < 1e-4
    graph = onnx.load(str(report.path))
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["images"]
    assert [o.name for o in graph.graph.output] == ["embeddings"]
    # A batch size never seen at export time, as uint8-like values scaled to [0, 1].
    x = torch.randint(0, 256, (5, 3, SIZE, SIZE)).float() / 255
    out, runtime = run_onnx(report.path, x.numpy())
    model.eval()
    with torch.no_grad():
        expected = model.embed(x).numpy()
    assert out.shape == (5, 8)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert runtime == ("onnxruntime" if "onnxruntime" in sys.modules else "onnx.reference")

    meta = json.loads(write_export_metadata(report, model, {"threshold": 0.8}).read_text())
    assert meta["embedding_dim"] == 8 and meta["threshold"] == 0.8
    assert meta["data_config"]["mean"] == [0.5, 0.5, 0.5] and meta["input_size"] == SIZE


def test_reference_evaluator_checks_when_onnxruntime_is_missing(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    report = export_onnx(model, tmp_path / "ref.onnx", check_batch=1)
    assert report.runtime == "onnx.reference" and report.max_abs_diff < 1e-4


def test_a_mismatch_leaves_no_file(model, tmp_path, monkeypatch):
    import cnnlab.verifier.export as export

    monkeypatch.setattr(export, "run_onnx", lambda path, images: (np.zeros((2, 8), np.float32), "fake"))
    with pytest.raises(CnnlabError, match="differs from PyTorch"):
        export_onnx(model, tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def test_flip_tta_is_part_of_the_exported_graph(tmp_path):
    torch.manual_seed(0)
    tta = SiameseNet("tf_efficientnet_lite0", embedding_dim=8, weights="none", input_size=SIZE, flip_tta=True)
    report = export_onnx(tta, tmp_path / "tta.onnx")
    x = torch.rand(3, 3, SIZE, SIZE)
    out, _ = run_onnx(report.path, x.numpy())
    mirrored, _ = run_onnx(report.path, x.flip(3).numpy())
    with torch.no_grad():
        np.testing.assert_allclose(out, tta.eval().embed(x).numpy(), atol=1e-4)
    np.testing.assert_allclose(out, mirrored, atol=1e-4)  # the graph embeds the image and its mirror
