"""Block A: the plain Conv3x3 -> BatchNorm -> ReLU unit (VGG, Simonyan & Zisserman 2015)."""
from __future__ import annotations

import torch.nn as nn

from cnnlab.blocks.registry import BLOCKS


def conv_bn(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
            groups: int = 1, relu: bool = True) -> nn.Sequential:
    # bias=False: BatchNorm right after makes a conv bias redundant. The reference report's
    # parameter counts agree: they add up only without conv biases (README, "BlockNet").
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                  groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


@BLOCKS.register("A", aliases=("conv",))
class ConvBlock(nn.Module):
    """Conv3x3 -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.body = conv_bn(in_channels, out_channels, 3, stride)

    def forward(self, x):
        return self.body(x)
