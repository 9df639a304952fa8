"""MobileFaceNet (Chen et al., 2018) in the width the field releases (insightface's "mbf"), with its GDC output layer.

Written from the layer table: a stride-2 3x3 conv, a 3x3 conv, then stages of inverted bottlenecks
(1x1 expand, 3x3 depthwise, 1x1 linear project; residual when the shape is kept), a 1x1 conv to 512
channels, and the global depthwise convolution (a 7x7 depthwise conv over the whole 7x7 map), then
Linear -> BN1d. Module names follow the layout of insightface's released weights (``models.insightface``).
"""

from __future__ import annotations

import torch
from torch import nn

SCALE = 2  # channel multiplier of the released "mbf" (the paper's network is scale 1)
# (out channels, stride, expanded channels, residual blocks after it) for each downsampling bottleneck.
STAGES = ((64 * SCALE, 2, 128, 4), (128 * SCALE, 2, 256, 6), (128 * SCALE, 2, 512, 2))
# The residual blocks of a stage expand to this many channels (not always the downsampler's).
RESIDUAL_EXPANSION = (128, 256, 256)
OUTPUT_CHANNELS = 512
OUTPUT_MAP = 7  # what the stride-16 trunk leaves of 112 px; the GDC kernel covers it


class ConvBlock(nn.Module):
    """conv -> BN -> PReLU (``activate``) or conv -> BN (a linear block)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        activate: bool = True,
        pad: bool = True,
    ) -> None:
        super().__init__()
        parts: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2 if pad else 0, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if activate:
            parts.append(nn.PReLU(cout))
        self.layers = nn.Sequential(*parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Bottleneck(nn.Module):
    """1x1 expand -> 3x3 depthwise (the stride) -> 1x1 linear projection, plus the input when ``residual``."""

    def __init__(self, cin: int, cout: int, expanded: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(cin, expanded),
            ConvBlock(expanded, expanded, 3, stride, groups=expanded),
            ConvBlock(expanded, cout, activate=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return out + x if self.residual else out


class Repeated(nn.Module):
    """``count`` residual bottlenecks that keep ``channels``."""

    def __init__(self, channels: int, count: int, expanded: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(Bottleneck(channels, channels, expanded, 1, True) for _ in range(count)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNetTrunk(nn.Module):
    """(B, 3, H, W) -> (B, 512, H/16, W/16)."""

    def __init__(self) -> None:
        super().__init__()
        width = 64 * SCALE
        # The second conv is grouped by 64 in the released weights (depthwise only at scale 1).
        modules: list[nn.Module] = [ConvBlock(3, width, 3, 2), ConvBlock(width, width, 3, 1, groups=64)]
        for (cout, stride, expanded, repeats), residual in zip(STAGES, RESIDUAL_EXPANSION, strict=True):
            modules += [Bottleneck(width, cout, expanded, stride, False), Repeated(cout, repeats, residual)]
            width = cout
        self.layers = nn.ModuleList(modules)
        self.conv_sep = ConvBlock(width, OUTPUT_CHANNELS)
        _initialise(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.conv_sep(x)


class GDCNeck(nn.Module):
    """(B, 512, h, w) -> [pool to 7x7] -> 7x7 depthwise conv + BN -> flatten -> [dropout] -> Linear -> BN1d.

    The pool is the identity at 112 px; other sizes keep the same 7x7 kernel.
    """

    def __init__(self, channels: int, embedding_dim: int, dropout: float) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(OUTPUT_MAP)
        self.layers = nn.Sequential(
            ConvBlock(channels, channels, OUTPUT_MAP, groups=channels, activate=False, pad=False),
            nn.Flatten(1),
            nn.Linear(channels, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim),
        )
        self.dropout = nn.Dropout(dropout)  # not in the paper; 0 unless model.dropout asks for it
        self.in_features = channels
        _initialise(self)

    @property
    def embedding_dim(self) -> int:
        return self.layers[-1].num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Indexed, not unpacked: TorchScript (facetrain export) reads constant indices only.
        x = self.layers[1](self.layers[0](self.pool(x)))
        return self.layers[3](self.layers[2](self.dropout(x)))

    def stages(self, x: torch.Tensor) -> list[tuple[str, torch.Tensor, list[nn.Module]]]:
        """(name, output, modules holding its parameters) for each step, for ``facetrain check``."""
        gdc, flatten, linear, norm = self.layers
        pooled = self.pool(x)
        reduced = gdc(pooled)
        flat = flatten(reduced)
        return [
            ("pool", pooled, []),
            ("gdc", reduced, [gdc]),
            ("flatten", flat, []),
            ("projection", norm(linear(flat)), [linear, norm]),
        ]


def _initialise(module: nn.Module) -> None:
    for part in module.modules():
        if isinstance(part, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(part.weight, mode="fan_out", nonlinearity="relu")
