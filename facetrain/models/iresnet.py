"""IResNet (Duta et al., "Improved Residual Networks", 2020, as ArcFace trains it): the trunk and its output layer.

Written from the published layer table: a 3x3 stride-1 stem (conv, BN, PReLU), four stages of widths
64, 128, 256 and 512 that each halve the map, and the output layer BN2d -> flatten -> dropout ->
Linear -> BN1d over the whole 7x7 map at 112 px. Module names follow the layout of insightface's
released ``backbone.pth`` files, so their keys map onto these one for one (``models.insightface``).
"""

from __future__ import annotations

import torch
from torch import nn

# Blocks per stage; the names are insightface's short names r18 ... r200 spelled out.
IRESNET_DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}
WIDTHS = (64, 128, 256, 512)
BN_EPS = 1e-5  # the field's setting (also torch's default), written out because the weights were trained with it
# The output layer flattens a map of this side: 7x7 is what four stride-2 stages leave of 112 px.
OUTPUT_MAP = 7


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class ImprovedBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3 (the stride) -> BN, plus the shortcut (1x1 conv + BN on a change)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout, eps=BN_EPS)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNetTrunk(nn.Module):
    """(B, 3, H, W) -> (B, 512, H/16, W/16): the stem and the four stages."""

    def __init__(self, depths: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.conv1 = _conv3x3(3, WIDTHS[0])
        self.bn1 = nn.BatchNorm2d(WIDTHS[0], eps=BN_EPS)
        self.prelu = nn.PReLU(WIDTHS[0])
        cin = WIDTHS[0]
        for index, (width, depth) in enumerate(zip(WIDTHS, depths, strict=True), start=1):
            blocks = [ImprovedBlock(cin, width, 2)] + [ImprovedBlock(width, width, 1) for _ in range(depth - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
            cin = width
        for module in self.modules():  # the field's initialisation: narrow normal convs, unit BN
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class FlattenNeck(nn.Module):
    """IResNet's output layer: (B, C, h, w) -> [pool to 7x7] -> BN2d -> flatten -> dropout -> Linear -> BN1d.

    The pool is the identity at 112 px (the map is already 7x7) and lets other sizes keep the same
    Linear. The final BN's scale is fixed at 1, as the field trains it: only its shift is learned.
    """

    def __init__(self, channels: int, embedding_dim: int, dropout: float) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(OUTPUT_MAP)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels * OUTPUT_MAP * OUTPUT_MAP, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=BN_EPS)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad_(False)
        self.in_features = self.fc.in_features

    @property
    def embedding_dim(self) -> int:
        return self.features.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(self.dropout(torch.flatten(self.bn2(self.pool(x)), 1))))

    def stages(self, x: torch.Tensor) -> list[tuple[str, torch.Tensor, list[nn.Module]]]:
        """(name, output, modules holding its parameters) for each step, for ``facetrain check``."""
        pooled = self.pool(x)
        flat = torch.flatten(self.bn2(pooled), 1)
        return [
            ("pool", pooled, []),
            ("flatten", flat, [self.bn2]),
            ("projection", self.features(self.fc(flat)), [self.fc, self.features]),
        ]
