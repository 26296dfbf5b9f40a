"""Building blocks compared in Part 1, looked up by name: `BLOCKS.create("C", 64, 128)`.

Every block takes `(in_channels, out_channels, stride=1, **options)` and maps
N x in_channels x H x W to N x out_channels x H/stride x W/stride.

`BLOCKS.default_names()` are the reference report's six blocks (A B C D D-dw E), the set a
comparison runs by default; `BLOCKS.names()` adds the extras (D2, the ResNet basic block).
"""
from cnnlab.blocks import attention, bottleneck, plain, residual  # noqa: F401  (registers)
from cnnlab.blocks.reference import REPORT_PARAMS, REPORT_VAL_ACC
from cnnlab.blocks.registry import BLOCKS

__all__ = ["BLOCKS", "REPORT_PARAMS", "REPORT_VAL_ACC", "create_block"]


def create_block(name: str, in_channels: int, out_channels: int, stride: int = 1, **options):
    return BLOCKS.create(name, in_channels, out_channels, stride=stride, **options)
