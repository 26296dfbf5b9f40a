"""Blocks B and C: block A followed by an attention gate.

B: spatial attention, a 1x1 conv to one channel -> sigmoid -> multiply (a per-pixel gate,
   the single-map form of the spatial branch in CBAM, Woo et al. 2018).
C: squeeze-and-excitation channel attention (Hu et al. 2018), reduction ratio 16 by default.

The reference report's counts fix the details: B's network is exactly `out_channels` larger
than A's per block (a bias-free 1x1 conv to one channel), C's exactly one SE with biases on
both layers per block (2*c*c/16 + c/16 + c).
"""
from __future__ import annotations

import torch.nn as nn

from cnnlab.blocks.plain import ConvBlock
from cnnlab.blocks.registry import BLOCKS


class SpatialGate(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        # No bias: a constant added before the sigmoid only rescales every gate alike, and
        # the report's B count (A + c per block) has none.
        self.score = nn.Conv2d(channels, 1, kernel_size=1, bias=False)

    def forward(self, x):
        return x * self.score(x).sigmoid()


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 8)  # floor of 8 so narrow nets keep a usable gate
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1), nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.fc(self.pool(x))


@BLOCKS.register("B", aliases=("spatial",))
class SpatialAttentionBlock(nn.Module):
    """Conv-BN-ReLU, then a per-pixel sigmoid gate."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv = ConvBlock(in_channels, out_channels, stride)
        self.gate = SpatialGate(out_channels)

    def forward(self, x):
        return self.gate(self.conv(x))


@BLOCKS.register("C", aliases=("se",))
class SqueezeExciteBlock(nn.Module):
    """Conv-BN-ReLU, then squeeze-and-excitation channel attention."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, reduction: int = 16):
        super().__init__()
        if reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {reduction}")
        self.conv = ConvBlock(in_channels, out_channels, stride)
        self.se = SqueezeExcite(out_channels, reduction)

    def forward(self, x):
        return self.se(self.conv(x))
