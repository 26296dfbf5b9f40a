import json
import os
from pathlib import Path

import pytest
import torch

from cnnlab.blocks import BLOCKS, create_block
from cnnlab.cli import main
from cnnlab.models import count_parameters, create_model

GOLDEN = Path(__file__).parent / "golden" / "param_counts.json"
ALL_BLOCKS = BLOCKS.names()


def test_registry_has_the_six_blocks_and_aliases():
    assert ALL_BLOCKS == ["A", "B", "C", "D", "D-dw", "E"]
    for alias, name in [("conv", "A"), ("spatial", "B"), ("se", "C"), ("residual", "D"),
                        ("depthwise", "D-dw"), ("bottleneck", "E")]:
        assert BLOCKS.get(alias) is BLOCKS.get(name)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        BLOCKS.register("A")(object)
    with pytest.raises(ValueError, match="already registered"):
        BLOCKS.register("Z", aliases=("se",))(object)
    assert "Z" not in BLOCKS


def test_unknown_block_lists_valid_names():
    with pytest.raises(KeyError) as err:
        create_model("F")
    for name in ALL_BLOCKS:
        assert name in str(err.value)


@pytest.mark.parametrize("name", ALL_BLOCKS)
@pytest.mark.parametrize("stride", [1, 2])
def test_block_shapes(name, stride):
    block = create_block(name, 16, 32, stride=stride)
    y = block(torch.randn(2, 16, 8, 8))
    assert y.shape == (2, 32, 8 // stride, 8 // stride)


@pytest.mark.parametrize("name", ALL_BLOCKS)
def test_network_forward_backward(name):
    model = create_model(name, width_multiplier=0.25)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10)
    assert model.forward_features(x).shape == (2, model.embedding_dim)
    out.logsumexp(1).sum().backward()
    assert torch.isfinite(out).all()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} got an all-zero gradient"


def test_block_options_and_config_validation():
    se = create_model("C", block_options={"reduction": 4}, width_multiplier=0.25)
    assert count_parameters(se) > count_parameters(create_model("C", width_multiplier=0.25))
    e8 = create_model("E", block_options={"cardinality": 8}, width_multiplier=0.25)
    assert e8(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    for bad in ({"width_multiplier": 0}, {"dropout": 1.5}, {"depths": (2, 0, 2)}, {"num_classes": 0}):
        with pytest.raises(ValueError):
            create_model("A", **bad)
    assert create_model("A", num_classes=7)(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def current_counts() -> dict:
    return {name: count_parameters(create_model(name)) for name in ALL_BLOCKS}


def test_golden_parameter_counts():
    counts = current_counts()
    if os.environ.get("CNNLAB_REGEN_GOLDEN"):
        GOLDEN.write_text(json.dumps(counts, indent=2) + "\n")
    assert counts == json.loads(GOLDEN.read_text())


def test_block_a_matches_reference_size():
    # The reference network had 7.77M parameters; the default base network stays within 10%.
    assert abs(count_parameters(create_model("A")) - 7.77e6) / 7.77e6 < 0.10


def test_cli_blocks_lists_six_blocks(capsys):
    assert main(["blocks"]) == 0
    out = capsys.readouterr().out
    counts = current_counts()
    for name in ALL_BLOCKS:
        assert any(line.split()[0] == name and f"{counts[name]:,}" in line for line in out.splitlines())


def test_cli_bad_input_is_one_line(capsys):
    assert main(["blocks", "--width-multiplier", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlab: error:") and err.count("\n") == 1
