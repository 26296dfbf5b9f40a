import json
import math
from pathlib import Path

import pytest
import torch

from cnnlab.blocks import BLOCKS, REPORT_PARAMS, create_block
from cnnlab.cli import main
from cnnlab.models import BlockNetConfig, count_parameters, create_model

# Written by hand from the reference report (issue 12) and the derivation below, never
# regenerated from the code: a change to the network has to change this file on purpose.
GOLDEN = Path(__file__).parent / "golden" / "param_counts.json"
ALL_BLOCKS = BLOCKS.names()
SIX = ["A", "B", "C", "D", "D-dw", "E"]
# The report's E is 20,672 parameters smaller than any natural bottleneck on its network.
E_GAP = 1_443_050 - 1_422_378


def test_registry_has_the_six_blocks_the_extra_and_aliases():
    assert BLOCKS.default_names() == SIX
    assert ALL_BLOCKS == SIX + ["D2"]
    assert BLOCKS.is_extra("basic") and not BLOCKS.is_extra("E")
    for alias, name in [("conv", "A"), ("spatial", "B"), ("se", "C"), ("residual", "D"),
                        ("depthwise", "D-dw"), ("bottleneck", "E"), ("basic", "D2")]:
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


def test_network_layout_and_resolution():
    model = create_model("A")
    assert len(model.stem) == 3 and [len(s) - 1 for s in model.stages] == [2, 3, 3]
    h = model.stem(torch.randn(1, 3, 32, 32))
    sizes = [h.shape[-1]]
    for stage in model.stages:
        h = stage(h)
        sizes.append(h.shape[-1])
    # One 2x2 max-pool after each conv group: stem at 32, stages at 16, 8, 4.
    assert sizes == [32, 16, 8, 4] and h.shape[1] == 512


def test_block_options_and_config_validation():
    se = create_model("C", block_options={"reduction": 4}, width_multiplier=0.25)
    assert count_parameters(se) > count_parameters(create_model("C", width_multiplier=0.25))
    e8 = create_model("E", block_options={"cardinality": 8}, width_multiplier=0.25)
    assert e8(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    for bad in ({"width_multiplier": 0}, {"dropout": 1.5}, {"depths": (2, 0, 2)}, {"num_classes": 0},
                {"stem_widths": ()}):
        with pytest.raises(ValueError):
            create_model("A", **bad)
    assert create_model("A", num_classes=7)(torch.randn(1, 3, 32, 32)).shape == (1, 7)


# ---------------------------------------------------------------- counts derived by hand
# PyTorch conventions: conv k x k has k*k*in*out/groups weights (no bias unless noted),
# BatchNorm 2 per channel (weight, bias; running statistics are buffers), Linear a bias.
def conv(k: int, cin: int, cout: int, groups: int = 1, bias: bool = False) -> int:
    return k * k * (cin // groups) * cout + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c


def a(i, o):
    return conv(3, i, o) + bn(o)


def se(c, reduction=16):
    h = max(c // reduction, 8)
    return conv(1, c, h, bias=True) + conv(1, h, c, bias=True)


def bottleneck(i, o, cardinality=32):
    m = o // 4
    g = math.gcd(m, cardinality)
    return conv(1, i, m) + bn(m) + conv(3, m, m, g) + bn(m) + conv(1, m, o) + bn(o) + conv(1, i, o)


def basic(i, o):
    return a(i, o) + a(o, o) + (0 if i == o else conv(1, i, o) + bn(o))


BLOCK_COUNT = {
    "A": a,
    "B": lambda i, o: a(i, o) + conv(1, o, 1),
    "C": lambda i, o: a(i, o) + se(o),
    "D": lambda i, o: a(i, o) + conv(1, i, o),
    "D-dw": lambda i, o: conv(3, i, i, groups=i) + conv(1, i, o) + bn(o) + conv(1, i, o),
    "E": bottleneck,
    "D2": basic,
}


def network_count(block: str, config: BlockNetConfig) -> int:
    total, width = 0, config.in_channels
    for w in config.stem_widths:
        total += a(width, config.scaled(w))
        width = config.scaled(w)
    for w, depth in zip(config.widths, config.depths):
        out = config.scaled(w)
        total += BLOCK_COUNT[block](width, out) + (depth - 1) * BLOCK_COUNT[block](out, out)
        width = out
    return total + width * config.num_classes + config.num_classes


def test_hand_counts_of_the_stem_and_head_match_the_issue():
    assert [a(3, 32), a(32, 64), a(64, 128)] == [928, 18_560, 73_984]
    assert 512 * 10 + 10 == 5_130


@pytest.mark.parametrize("name", ALL_BLOCKS)
@pytest.mark.parametrize("channels", [(128, 128), (128, 256), (256, 512), (16, 32)])
def test_each_block_matches_its_hand_count(name, channels):
    assert count_parameters(create_block(name, *channels)) == BLOCK_COUNT[name](*channels)


@pytest.mark.parametrize("name", ALL_BLOCKS)
@pytest.mark.parametrize("width_multiplier", [1.0, 0.25])
def test_network_matches_its_hand_count(name, width_multiplier):
    config = BlockNetConfig(block=name, width_multiplier=width_multiplier)
    assert count_parameters(create_model(name, width_multiplier=width_multiplier)) == network_count(name, config)


def test_golden_counts_are_the_derived_ones_and_the_reports():
    golden = json.loads(GOLDEN.read_text())
    assert list(golden) == ALL_BLOCKS
    for name in ALL_BLOCKS:
        assert network_count(name, BlockNetConfig(block=name)) == golden[name], name
        assert count_parameters(create_model(name)) == golden[name], name
    assert list(REPORT_PARAMS) == SIX
    for name in ["A", "B", "C", "D", "D-dw"]:
        assert golden[name] == REPORT_PARAMS[name], name
    assert golden["E"] - REPORT_PARAMS["E"] == E_GAP == 20_672


def test_no_simple_bottleneck_variant_gives_the_reports_e():
    # The README's open point, kept reproducible: over the report's stem, head and block
    # sequence, vary the bottleneck width, the groups, the shortcut and BN/bias per conv.
    from itertools import product

    layout = [(128, 128)] * 2 + [(128, 256)] + [(256, 256)] * 2 + [(256, 512)] + [(512, 512)] * 2
    target = REPORT_PARAMS["E"] - (a(3, 32) + a(32, 64) + a(64, 128)) - (512 * 10 + 10)
    mids = [lambda i, o: o // 4, lambda i, o: i // 4, lambda i, o: o // 2, lambda i, o: i // 2, lambda i, o: o // 8]
    groups = [lambda m: math.gcd(m, 32), lambda m: math.gcd(m, 16), lambda m: 8, lambda m: 4,
              lambda m: m // 4, lambda m: m // 2, lambda m: m]
    shortcuts = [lambda i, o: i * o, lambda i, o: i * o + bn(o), lambda i, o: i * o if i != o else 0,
                 lambda i, o: i * o + bn(o) if i != o else 0, lambda i, o: 0]
    tried, matches = 0, []
    for mid, group, skip, norms, biases in product(mids, groups, shortcuts, product((0, 1), repeat=3),
                                                   product((0, 1), repeat=3)):
        total = 0
        for i, o in layout:
            m = mid(i, o)
            widths = (m, m, o)
            total += conv(1, i, m) + conv(3, m, m, group(m)) + conv(1, m, o) + skip(i, o)
            total += sum(n * bn(w) + b * w for n, b, w in zip(norms, biases, widths))
        tried += 1
        matches += [total] if total == target else []
    assert tried == 11_200 and matches == []
    # The variant cnnlab registers is one of them.
    assert sum(bottleneck(i, o) for i, o in layout) - target == E_GAP


def test_cli_blocks_lists_every_block_beside_the_report(capsys):
    assert main(["blocks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    golden = json.loads(GOLDEN.read_text())
    rows = {line.split()[0]: line for line in lines[1:] if line.split() and line.split()[0] in golden}
    assert list(rows) == ALL_BLOCKS
    for name in SIX:
        assert f"{golden[name]:,}" in rows[name] and f"{REPORT_PARAMS[name]:,}" in rows[name]
    for name in ["A", "B", "C", "D", "D-dw"]:
        assert rows[name].split()[4] == "0", rows[name]
    assert rows["E"].split()[4] == f"+{E_GAP:,}"
    assert rows["D2"].split()[3:5] == ["-", "-"] and "extra" in rows["D2"]
    # The report's whole table: validation and training accuracy and training time per block.
    assert rows["B"].split()[5:9] == ["89.27%", "94.66%", "25m", "58s"]
    assert rows["D-dw"].split()[5:9] == ["79.47%", "81.58%", "23m", "45s"]
    assert rows["D2"].split()[5:8] == ["-", "-", "-"]


def test_cli_blocks_at_another_width_leaves_the_report_out(capsys):
    assert main(["blocks", "--width-multiplier", "0.25"]) == 0
    out = capsys.readouterr().out
    a_row = next(line for line in out.splitlines() if line.split()[:1] == ["A"])
    assert f"{count_parameters(create_model('A', width_multiplier=0.25)):,}" in a_row
    assert f"{REPORT_PARAMS['A']:,}" in a_row and a_row.split()[4] == "-"


def test_cli_bad_input_is_one_line(capsys):
    assert main(["blocks", "--width-multiplier", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlab: error:") and err.count("\n") == 1


MACS_GOLDEN = GOLDEN.parent / "macs.json"


@pytest.mark.parametrize("name", ALL_BLOCKS)
def test_golden_mac_counts(name):
    """MACs per 32x32 image at full width (the results tables' column): torch's FlopCounterMode
    gives exactly the figures the forward-hook counter it replaced published."""
    from cnnlab.tasks import count_macs
    assert count_macs(create_model(name)) == json.loads(MACS_GOLDEN.read_text())[name]
