"""The standardized base network of Part 1: one stem, three stages, one head; only the block
inside the stages changes, so a comparison measures the block and nothing else.

    stem   Conv3x3(3->64)-BN-ReLU                          32x32
    stage1 block(64->128),  maxpool, block x1 (128)        32 -> 16
    stage2 block(128->256), maxpool, block x2 (256)        16 -> 8
    stage3 block(256->512), maxpool, block x2 (512)         8 -> 4
    head   global average pool -> dropout -> Linear(512->classes)

Downsampling is a 2x2 max-pool after the first block of each stage (as airbench does):
the widening block still sees the full resolution, the rest run at a quarter of the
pixels, which keeps a 7.6M-parameter network fast enough to train in seconds on a GPU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from cnnlab.blocks import BLOCKS, create_block
from cnnlab.blocks.plain import conv_bn


@dataclass
class BlockNetConfig:
    block: str = "A"
    widths: tuple[int, ...] = (128, 256, 512)
    depths: tuple[int, ...] = (2, 3, 3)
    stem_width: int = 64
    width_multiplier: float = 1.0
    dropout: float = 0.0
    num_classes: int = 10
    in_channels: int = 3
    block_options: dict = field(default_factory=dict)

    def __post_init__(self):
        self.block = BLOCKS.canonical(self.block)
        self.widths, self.depths = tuple(self.widths), tuple(self.depths)
        if len(self.widths) != len(self.depths) or not self.widths:
            raise ValueError("widths and depths must be non-empty and of equal length")
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
        width = config.scaled(config.stem_width)
        self.stem = conv_bn(config.in_channels, width, 3)
        stages = []
        for stage_width, depth in zip(config.widths, config.depths):
            out = config.scaled(stage_width)
            layers = [create_block(config.block, width, out, **config.block_options),
                      nn.MaxPool2d(2)]
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
