"""The ArcFace crop template, the least-squares similarity fit onto it, and the warp.

Coordinates are in pixel-index units: pixel (i, j) of an image has its centre at x = i, y = j, the
convention of insightface's template and of OpenCV's warpAffine.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, translation) that best maps ``src`` onto ``dst``.

    Least squares over the points (Umeyama, IEEE TPAMI 1991), reflections excluded:
    ``dst ≈ A @ [x, y, 1]`` for each row ``(x, y)`` of ``src``.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1] = -1.0
    rotation = u @ np.diag(sign) @ vt
    variance = (src_c**2).sum() / len(src)
    scale = (singular * sign).sum() / variance if variance > 0 else 1.0
    shift = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, shift[:, None]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Maps (N, 2) points with a 2x3 affine matrix."""
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def invert(matrix: np.ndarray) -> np.ndarray:
    linear = np.linalg.inv(matrix[:, :2])
    return np.hstack([linear, -(linear @ matrix[:, 2])[:, None]])


def warp(pixels: torch.Tensor, matrix: np.ndarray, width: int, height: int) -> torch.Tensor:
    """The ``width`` x ``height`` crop of a (3, H, W) uint8 image under ``matrix`` (image -> crop).

    Bilinear, black outside the image. When the crop shrinks the face by more than 2x, the image is
    first downscaled with antialiasing, so a face from a large photo is not aliased.
    """
    matrix = np.asarray(matrix, np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    image = pixels.float()
    if scale < 0.5:
        factor = 2 * scale  # the face ends up at twice the crop's scale, then the warp halves it
        in_h, in_w = image.shape[-2:]
        size = [max(1, round(in_h * factor)), max(1, round(in_w * factor))]
        image = F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        # A pixel-index point x of the original lands at (x + 0.5) * s - 0.5 in the resized image.
        sy, sx = size[0] / in_h, size[1] / in_w
        resize = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])
        matrix = matrix @ np.vstack([invert(resize), [0.0, 0.0, 1.0]])
    back = invert(matrix)  # crop pixel -> source pixel
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")  # fmt: skip
    src_x = back[0, 0] * xs + back[0, 1] * ys + back[0, 2]
    src_y = back[1, 0] * xs + back[1, 1] * ys + back[1, 2]
    in_h, in_w = image.shape[-2:]
    grid = torch.stack([(2 * src_x + 1) / in_w - 1, (2 * src_y + 1) / in_h - 1], dim=-1).float()
    out = F.grid_sample(image[None], grid[None].to(image.device), mode="bilinear", padding_mode="zeros",
                        align_corners=False)  # fmt: skip
    return out[0].round_().clamp_(0, 255).to(torch.uint8)
