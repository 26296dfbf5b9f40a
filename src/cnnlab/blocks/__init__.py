"""Building blocks compared in Part 1, looked up by name: `BLOCKS.create("C", 64, 128)`.

Every block takes `(in_channels, out_channels, stride=1, **options)` and maps
N x in_channels x H x W to N x out_channels x H/stride x W/stride.
"""
from cnnlab.blocks.registry import BLOCKS
from cnnlab.blocks import plain, attention, residual, bottleneck  # noqa: F401  (registers)

__all__ = ["BLOCKS", "create_block"]


def create_block(name: str, in_channels: int, out_channels: int, stride: int = 1, **options):
    return BLOCKS.create(name, in_channels, out_channels, stride=stride, **options)
