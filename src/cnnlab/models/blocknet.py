"""The standardized base network of Part 1: the reference report's network, one stem, three
stages, one head; only the block inside the stages changes, so a comparison measures the
block and nothing else.

    stem   Conv3x3-BN-ReLU 3->32, 32->64, 64->128             32x32
    stage1 maxpool 2x2, 2 blocks: 128->128, 128->128           16x16
    stage2 maxpool 2x2, 3 blocks: 128->256, 256->256, 256->256   8x8
    stage3 maxpool 2x2, 3 blocks: 256->512, 512->512, 512->512   4x4
    head   global average pool -> dropout -> Linear(512->classes)

The widths and depths are the report's: its six parameter counts are reproduced exactly by
this network for A, B, C, D and D-dw (E: +1.5%, see blocks/bottleneck.py), which pins every
layer that carries parameters (tests/test_blocks.py derives each count by hand).

Max-pooling carries no parameters, so the counts do not say where it sits. It is placed
VGG-style, one 2x2 max-pool after each group of convolutions (after the stem, stage 1 and
stage 2): the stem's three convs see the full 32x32 image and the 512-wide stage runs at
4x4, where the last residual layer of Page's DAWNBench ResNet (whose recipe the presets
follow) runs too. Pooling only after stages 1 and 2 (stage 3 at 8x8) would cost about three
times the MACs, out of the `quick` preset's CPU budget (`count_macs`; the numbers are in
docs/decisions/blocknet-layout.md).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from cnnlab.blocks import BLOCKS, create_block
from cnnlab.blocks.plain import conv_bn
from cnnlab.core.config import option


@dataclass
class BlockNetConfig:
    block: str = "A"
    widths: tuple[int, ...] = (128, 256, 512)
    depths: tuple[int, ...] = (2, 3, 3)
    stem_widths: tuple[int, ...] = (32, 64, 128)
    width_multiplier: float = option(1.0, "scale every stage width (1.0: the report's network)")
    dropout: float = option(0.0, "dropout before the classifier (0 = off)")
    num_classes: int = 10
    in_channels: int = 3
    block_options: dict = field(default_factory=dict)

    def __post_init__(self):
        self.block = BLOCKS.canonical(self.block)
        self.widths, self.depths = tuple(self.widths), tuple(self.depths)
        self.stem_widths = tuple(self.stem_widths)
        if len(self.widths) != len(self.depths) or not self.widths:
            raise ValueError("widths and depths must be non-empty and of equal length")
        if not self.stem_widths or any(w < 1 for w in (*self.stem_widths, *self.widths)):
            raise ValueError("stem_widths must be non-empty and every width >= 1")
        if any(d < 1 for d in self.depths):
            raise ValueError(f"every stage needs at least one block, got depths={self.depths}")
        if self.width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be > 0, got {self.width_multiplier}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")

    def scaled(self, channels: int) -> int:
        # Round to a multiple of 8 (at least 8): friendly to tensor cores and to E's groups.
        return max(8, int(round(channels * self.width_multiplier / 8)) * 8)

    def to_dict(self) -> dict:
        return asdict(self)


class BlockNet(nn.Module):
    def __init__(self, config: BlockNetConfig | None = None, **overrides):
        super().__init__()
        if config is None:
            config = BlockNetConfig(**overrides)
        elif overrides:
            config = BlockNetConfig(**{**config.to_dict(), **overrides})
        self.config = config
        stem, width = [], config.in_channels
        for stem_width in config.stem_widths:
            stem.append(conv_bn(width, config.scaled(stem_width), 3))
            width = config.scaled(stem_width)
        self.stem = nn.Sequential(*stem)
        stages = []
        for stage_width, depth in zip(config.widths, config.depths):
            out = config.scaled(stage_width)
            # The first block widens (in -> out); the rest keep the width, as in the report.
            layers = [nn.MaxPool2d(2), create_block(config.block, width, out, **config.block_options)]
            layers += [create_block(config.block, out, out, **config.block_options)
                       for _ in range(depth - 1)]
            stages.append(nn.Sequential(*layers))
            width = out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(width, config.num_classes)
        self.embedding_dim = width

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate embedding (after global pooling), N x embedding_dim."""
        return self.pool(self.stages(self.stem(x))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.forward_features(x)))


def create_model(block: str = "A", **options) -> BlockNet:
    """`create_model("se", width_multiplier=0.25)`: the base network holding one block."""
    return BlockNet(BlockNetConfig(block=block, **options))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
