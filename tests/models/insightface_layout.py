"""insightface's published ``backbone.pth`` layout, written from the layer tables, and a reference forward.

Neither uses facetrain's modules nor insightface's code: the key names and shapes follow the published
arcface_torch state dicts (IResNet: stem, layer1-4 of improved blocks, bn2, fc with bias, features
BN1d; mbf: layers.0-7, conv_sep, the GDC in features), and the forward is plain ``torch.nn.functional``
over the state dict alone, so a mistake in facetrain's modules or key mapping cannot hide in both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IRESNET_TABLE = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
WIDTHS = (64, 128, 256, 512)
# mbf: (in, out, expanded channels of the stride-2 bottleneck, residual blocks after it, their expansion).
MBF_TABLE = ((128, 128, 128, 4, 128), (128, 256, 256, 6, 256), (256, 256, 512, 2, 256))
EPS = 1e-5
Layout = dict[str, tuple[int, ...]]


def _bn(layout: Layout, prefix: str, channels: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        layout[f"{prefix}.{name}"] = (channels,)
    layout[f"{prefix}.num_batches_tracked"] = ()


def iresnet_layout(depths: tuple[int, ...], dim: int) -> Layout:
    layout: Layout = {"conv1.weight": (64, 3, 3, 3)}
    _bn(layout, "bn1", 64)
    layout["prelu.weight"] = (64,)
    cin = 64
    for stage, (width, depth) in enumerate(zip(WIDTHS, depths, strict=True), start=1):
        for index in range(depth):
            block = f"layer{stage}.{index}"
            _bn(layout, f"{block}.bn1", cin)
            layout[f"{block}.conv1.weight"] = (width, cin, 3, 3)
            _bn(layout, f"{block}.bn2", width)
            layout[f"{block}.prelu.weight"] = (width,)
            layout[f"{block}.conv2.weight"] = (width, width, 3, 3)
            _bn(layout, f"{block}.bn3", width)
            if index == 0:  # every stage starts with a stride-2 block, which has the 1x1 shortcut
                layout[f"{block}.downsample.0.weight"] = (width, cin, 1, 1)
                _bn(layout, f"{block}.downsample.1", width)
            cin = width
    _bn(layout, "bn2", 512)
    layout["fc.weight"], layout["fc.bias"] = (dim, 512 * 7 * 7), (dim,)
    _bn(layout, "features", dim)
    return layout


def _conv_block(layout: Layout, prefix: str, cin: int, cout: int, kernel: int, groups: int, prelu: bool) -> None:
    layout[f"{prefix}.layers.0.weight"] = (cout, cin // groups, kernel, kernel)
    _bn(layout, f"{prefix}.layers.1", cout)
    if prelu:
        layout[f"{prefix}.layers.2.weight"] = (cout,)


def _bottleneck(layout: Layout, prefix: str, cin: int, cout: int, expanded: int) -> None:
    _conv_block(layout, f"{prefix}.layers.0", cin, expanded, 1, 1, True)
    _conv_block(layout, f"{prefix}.layers.1", expanded, expanded, 3, expanded, True)
    _conv_block(layout, f"{prefix}.layers.2", expanded, cout, 1, 1, False)


def mbf_layout(dim: int) -> Layout:
    layout: Layout = {}
    _conv_block(layout, "layers.0", 3, 128, 3, 1, True)
    _conv_block(layout, "layers.1", 128, 128, 3, 64, True)
    index = 2
    for cin, cout, expanded, repeats, residual in MBF_TABLE:
        _bottleneck(layout, f"layers.{index}", cin, cout, expanded)
        for block in range(repeats):
            _bottleneck(layout, f"layers.{index + 1}.layers.{block}", cout, cout, residual)
        index += 2
    _conv_block(layout, "conv_sep", 256, 512, 1, 1, True)
    _conv_block(layout, "features.layers.0", 512, 512, 7, 512, False)
    layout["features.layers.2.weight"] = (dim, 512)
    _bn(layout, "features.layers.3", dim)
    return layout


def layout_of(name: str, dim: int) -> Layout:
    return mbf_layout(dim) if name == "mbf" else iresnet_layout(IRESNET_TABLE[name], dim)


def random_weights(layout: Layout, seed: int = 0) -> dict[str, torch.Tensor]:
    """Values of a trained-looking network: BN statistics away from 0/1, so a swapped key changes the output,
    and He-scaled convs with small shifts, so the embedding depends on the image (not only on the biases)."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
        return torch.rand(shape, generator=generator) * (high - low) + low

    state = {}
    for key, shape in layout.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith(("running_var", "prelu.weight", "layers.2.weight")) and len(shape) == 1:
            state[key] = uniform(shape, 0.5, 1.5) if key.endswith("running_var") else uniform(shape, 0.0, 0.5)
        elif len(shape) == 1:  # BN weight (around 1), BN bias, running mean, fc bias (around 0)
            state[key] = uniform(shape, 0.5, 1.0) if key.endswith("weight") else uniform(shape, -0.02, 0.02)
        else:  # conv or linear: He-scaled; the residual sums of r200 stay well inside float32
            fan_in = int(torch.tensor(shape[1:]).prod())
            state[key] = torch.randn(shape, generator=generator) * (2 / fan_in) ** 0.5
    return state


def _norm(x: torch.Tensor, state: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    weight, bias = state[f"{prefix}.weight"], state[f"{prefix}.bias"]
    mean, var = state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"]
    return F.batch_norm(x, mean, var, weight, bias, training=False, eps=EPS)


def iresnet_forward(state: dict[str, torch.Tensor], depths: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    x = F.prelu(_norm(F.conv2d(x, state["conv1.weight"], padding=1), state, "bn1"), state["prelu.weight"])
    for stage, depth in enumerate(depths, start=1):
        for index in range(depth):
            block, stride = f"layer{stage}.{index}", 2 if index == 0 else 1
            out = F.conv2d(_norm(x, state, f"{block}.bn1"), state[f"{block}.conv1.weight"], padding=1)
            out = F.prelu(_norm(out, state, f"{block}.bn2"), state[f"{block}.prelu.weight"])
            out = _norm(F.conv2d(out, state[f"{block}.conv2.weight"], stride=stride, padding=1), state, f"{block}.bn3")
            if index == 0:
                shortcut = F.conv2d(x, state[f"{block}.downsample.0.weight"], stride=stride)
                x = _norm(shortcut, state, f"{block}.downsample.1")
            x = out + x
    x = torch.flatten(_norm(x, state, "bn2"), 1)  # (B, 512, 7, 7) -> (B, 25088)
    return _norm(F.linear(x, state["fc.weight"], state["fc.bias"]), state, "features")


def _block(state: dict, prefix: str, x: torch.Tensor, stride: int = 1, pad: bool = True) -> torch.Tensor:
    weight = state[f"{prefix}.layers.0.weight"]
    groups, kernel = x.shape[1] // weight.shape[1], weight.shape[-1]
    x = F.conv2d(x, weight, stride=stride, padding=kernel // 2 if pad else 0, groups=groups)
    x = _norm(x, state, f"{prefix}.layers.1")
    prelu = state.get(f"{prefix}.layers.2.weight")
    return x if prelu is None or prelu.dim() != 1 else F.prelu(x, prelu)


def _bottleneck_forward(state: dict, prefix: str, x: torch.Tensor, stride: int) -> torch.Tensor:
    out = _block(state, f"{prefix}.layers.0", x)
    out = _block(state, f"{prefix}.layers.1", out, stride)
    return _block(state, f"{prefix}.layers.2", out)


def mbf_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    x = _block(state, "layers.1", _block(state, "layers.0", x, stride=2))
    index = 2
    for *_, repeats, _ in MBF_TABLE:
        x = _bottleneck_forward(state, f"layers.{index}", x, stride=2)
        for block in range(repeats):
            x = x + _bottleneck_forward(state, f"layers.{index + 1}.layers.{block}", x, stride=1)
        index += 2
    x = _block(state, "features.layers.0", _block(state, "conv_sep", x), pad=False)  # GDC: (B, 512, 1, 1)
    x = F.linear(torch.flatten(x, 1), state["features.layers.2.weight"])
    return _norm(x, state, "features.layers.3")


def reference_forward(name: str, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """(B, 3, 112, 112) in [-1, 1] -> (B, D), not normalised."""
    return mbf_forward(state, x) if name == "mbf" else iresnet_forward(state, IRESNET_TABLE[name], x)


def face_like_images(count: int = 2, seed: int = 3) -> torch.Tensor:
    """(count, 3, 112, 112) in [-1, 1]: coarse patterns (7x7 noise, upsampled) plus pixel noise, so that
    different images get clearly different embeddings."""
    generator = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(count, 3, 7, 7, generator=generator), size=112, mode="bilinear")
    return (0.8 * coarse + 0.2 * torch.rand(count, 3, 112, 112, generator=generator)) * 2 - 1
