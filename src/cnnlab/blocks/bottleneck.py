"""Block E: the ResNeXt bottleneck (Xie et al. 2017): 1x1 reduce -> grouped 3x3 with
`cardinality` groups -> 1x1 expand, plus the 1x1 conv shortcut D uses.

The bottleneck width is out/4 (ResNet's expansion 4) and the cardinality 32. On the report's
base network this gives 1,443,050 parameters against the report's 1,422,378 (+20,672,
+1.5%); no natural bottleneck on that base matches exactly, so the report's E was probably
built differently (README, "BlockNet", the open point).
"""
from __future__ import annotations

import math

import torch.nn as nn

from cnnlab.blocks.plain import conv_bn
from cnnlab.blocks.registry import BLOCKS
from cnnlab.blocks.residual import _Residual, projection


@BLOCKS.register("E", aliases=("bottleneck",))
class BottleneckBlock(_Residual):
    """1x1 reduce -> grouped 3x3 (cardinality 32) -> 1x1 expand, plus 1x1 conv shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 cardinality: int = 32, bottleneck_ratio: float = 0.25):
        if cardinality < 1 or bottleneck_ratio <= 0:
            raise ValueError("cardinality must be >= 1 and bottleneck_ratio > 0")
        width = max(int(out_channels * bottleneck_ratio), 1)
        # Narrow (width-multiplied) nets may have fewer channels than groups; keep the
        # largest group count that divides the bottleneck width.
        groups = math.gcd(width, cardinality)
        body = nn.Sequential(
            conv_bn(in_channels, width, 1),
            conv_bn(width, width, 3, stride, groups=groups),
            conv_bn(width, out_channels, 1, relu=False),
        )
        super().__init__(body, projection(in_channels, out_channels, stride))
        self.groups = groups
