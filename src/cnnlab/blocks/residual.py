"""Blocks D and D-dw: the basic residual block (He et al. 2016) and its depthwise-separable
variant (separable convs as in MobileNet, Howard et al. 2017)."""
from __future__ import annotations

import torch.nn as nn

from cnnlab.blocks.plain import conv_bn
from cnnlab.blocks.registry import BLOCKS


def shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return conv_bn(in_channels, out_channels, kernel_size=1, stride=stride, relu=False)


def separable(in_channels: int, out_channels: int, stride: int, relu: bool) -> nn.Sequential:
    """Depthwise 3x3 (spatial mixing) -> pointwise 1x1 (channel mixing), BN after each."""
    return nn.Sequential(
        conv_bn(in_channels, in_channels, 3, stride, groups=in_channels, relu=True),
        conv_bn(in_channels, out_channels, 1, 1, relu=relu),
    )


class _Residual(nn.Module):
    def __init__(self, body: nn.Module, skip: nn.Module):
        super().__init__()
        self.body, self.skip = body, skip
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


@BLOCKS.register("D", aliases=("residual",))
class ResidualBlock(_Residual):
    """Conv3x3-BN-ReLU -> Conv3x3-BN, plus identity (or 1x1 projection) shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        body = nn.Sequential(
            conv_bn(in_channels, out_channels, 3, stride),
            conv_bn(out_channels, out_channels, 3, 1, relu=False),
        )
        super().__init__(body, shortcut(in_channels, out_channels, stride))


@BLOCKS.register("D-dw", aliases=("depthwise",))
class DepthwiseResidualBlock(_Residual):
    """The residual block with both 3x3 convs replaced by depthwise-separable convs."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        body = nn.Sequential(
            separable(in_channels, out_channels, stride, relu=True),
            separable(out_channels, out_channels, 1, relu=False),
        )
        super().__init__(body, shortcut(in_channels, out_channels, stride))
