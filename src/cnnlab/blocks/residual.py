"""Residual blocks (He et al. 2016): D and D-dw, the report's one-conv residual units, and
D2, the two-conv ResNet basic block kept as an extra for comparison.

The report's parameter counts pin D and D-dw down (README, "BlockNet"): D's network is A's
plus exactly in*out per block, so every block (even 128 -> 128) carries a bias-free 1x1
projection shortcut with no BatchNorm, and D keeps A's single conv3x3-BN. D-dw's count is
met only by a depthwise 3x3 followed directly by the pointwise 1x1 and one BatchNorm: no
BN or ReLU between the two convs, which is Xception's separable convolution (Chollet 2017,
where an intermediate activation trained slower and ended less accurate).
"""
from __future__ import annotations

import torch.nn as nn

from cnnlab.blocks.plain import conv_bn
from cnnlab.blocks.registry import BLOCKS


def projection(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """The report's shortcut: a bias-free 1x1 conv, no BatchNorm, on every block."""
    return nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)


def shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """The ResNet shortcut: identity where shapes allow, else a 1x1 conv-BN projection."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return conv_bn(in_channels, out_channels, kernel_size=1, stride=stride, relu=False)


class _Residual(nn.Module):
    def __init__(self, body: nn.Module, skip: nn.Module):
        super().__init__()
        self.body, self.skip = body, skip
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


@BLOCKS.register("D", aliases=("residual",))
class ResidualBlock(_Residual):
    """Conv3x3-BN, plus a 1x1 conv shortcut, added, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__(conv_bn(in_channels, out_channels, 3, stride, relu=False),
                         projection(in_channels, out_channels, stride))


@BLOCKS.register("D-dw", aliases=("depthwise",))
class DepthwiseResidualBlock(_Residual):
    """Depthwise 3x3 -> pointwise 1x1 -> BN, plus a 1x1 conv shortcut, added, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        body = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        super().__init__(body, projection(in_channels, out_channels, stride))


@BLOCKS.register("D2", aliases=("basic",), extra=True)
class BasicBlock(_Residual):
    """ResNet basic block: two conv3x3-BN, identity (or 1x1 conv-BN) shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        body = nn.Sequential(
            conv_bn(in_channels, out_channels, 3, stride),
            conv_bn(out_channels, out_channels, 3, 1, relu=False),
        )
        super().__init__(body, shortcut(in_channels, out_channels, stride))
