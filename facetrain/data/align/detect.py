"""MTCNN face detection: P-Net over an image pyramid, then R-Net, then O-Net (Zhang et al. 2016).

Boxes are in edge coordinates (pixel i spans [i, i + 1)); landmarks are pixel indices (the centre
of pixel i is at i), the convention of the alignment template. Images are (3, H, W) uint8 RGB
tensors; several images go through each stage as one batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, roi_align

from facetrain.data.align.nets import load_nets

THRESHOLDS = (0.6, 0.7, 0.7)  # the paper's release: P-Net, R-Net, O-Net face probability
PYRAMID_FACTOR = 0.709  # each pyramid level is 0.709x the last: half the area
DETECT_SIDE = 1024  # longer images are downscaled to this before detection (the crop uses the original)
_CELL, _STRIDE = 12, 2  # P-Net's window and its stride in the input


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # (4,) x1, y1, x2, y2 in the image's pixels
    score: float  # O-Net's face probability
    points: np.ndarray  # (5, 2): left eye, right eye, nose, left and right mouth corner (image's left)

    @property
    def size(self) -> float:
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))


class FaceDetector:
    """Finds faces of at least ``min_face`` pixels (the shorter box side) and their five landmarks."""

    def __init__(
        self,
        device: torch.device | str = "cpu",
        min_face: int = 20,
        thresholds: tuple[float, float, float] = THRESHOLDS,
        detect_side: int = DETECT_SIDE,
    ) -> None:
        self.device = torch.device(device)
        self.pnet, self.rnet, self.onet = load_nets(self.device)
        self.min_face, self.thresholds, self.detect_side = min_face, thresholds, detect_side

    def detect(self, pixels: torch.Tensor, decoded_scale: float = 1.0) -> list[Face]:
        return self.detect_batch([pixels], [decoded_scale])[0]

    @torch.inference_mode()
    def detect_batch(self, images: list[torch.Tensor], decoded_scales: list[float] | None = None) -> list[list[Face]]:
        """The faces of each (3, H, W) uint8 image, best score first.

        ``decoded_scales``: for an image decoded at a fraction of its file's size, that fraction, so
        that ``min_face`` stays in the file's pixels.
        """
        if not images:
            return []
        shrunk, ratios = zip(*(self._shrink(image) for image in images), strict=True)
        scales = decoded_scales or [1.0] * len(images)
        boxes, owner = self._propose(list(shrunk), [ratio * scale for ratio, scale in zip(ratios, scales, strict=True)])
        boxes, owner, _, _ = self._refine(self.rnet, list(shrunk), boxes, owner, 24, self.thresholds[1])
        boxes, owner, scores, points = self._refine(self.onet, list(shrunk), boxes, owner, 48, self.thresholds[2])
        faces: list[list[Face]] = [[] for _ in images]
        boxes_np, points_np = boxes.cpu().double().numpy(), points.cpu().double().numpy()
        for box, index, score, landmarks in zip(boxes_np, owner.tolist(), scores.tolist(), points_np, strict=True):
            ratio = ratios[index]
            faces[index].append(Face(box / ratio, float(score), (landmarks + 0.5) / ratio - 0.5))
        for found in faces:
            found.sort(key=lambda face: -face.score)
        return faces

    def _shrink(self, image: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The image as float on the device, downscaled so its longer side is at most ``detect_side``."""
        pixels = image.to(self.device).float()
        height, width = pixels.shape[-2:]
        ratio = min(1.0, self.detect_side / max(height, width))
        if ratio < 1.0:
            size = [max(1, round(height * ratio)), max(1, round(width * ratio))]
            pixels = F.interpolate(pixels[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
            ratio = size[1] / width
        return pixels, ratio

    def _scales(self, height: int, width: int, ratio: float) -> list[float]:
        """Pyramid scales: the smallest face maps to P-Net's 12-px window, then 0.709x per level.

        The image is never enlarged: at most, a face of 12 px in the detection image is found.
        """
        scale = _CELL / max(_CELL, self.min_face * ratio)
        scales = []
        while min(height, width) * scale >= _CELL:
            scales.append(scale)
            scale *= PYRAMID_FACTOR
        return scales

    def _propose(self, images: list[torch.Tensor], ratios: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: P-Net's candidate boxes (squared) of every image, and which image owns each.

        ``ratios``: each image's size over its file's size, which converts ``min_face`` to its pixels.
        """
        found_boxes, found_scores, found_owner = [], [], []
        by_size: dict[tuple[int, int, float], list[int]] = {}  # images of one size go through P-Net as a batch
        for index, image in enumerate(images):
            by_size.setdefault((*image.shape[-2:], ratios[index]), []).append(index)
        for (height, width, ratio), indices in by_size.items():
            batch = torch.stack([images[i] for i in indices])
            for scale in self._scales(height, width, ratio):
                size = [math.ceil(height * scale), math.ceil(width * scale)]
                level = F.interpolate(batch, size=size, mode="bilinear", antialias=True, align_corners=False)
                prob, reg = self.pnet(_normalise(level))
                boxes, scores, owner = _cells(prob, reg, size[1] / width, size[0] / height, self.thresholds[0])
                keep = batched_nms(boxes[:, :4], scores, owner, 0.5)
                found_boxes.append(boxes[keep])
                found_scores.append(scores[keep])
                found_owner.append(torch.tensor(indices, device=self.device)[owner[keep]])
        if not found_boxes:
            return torch.zeros(0, 4, device=self.device), torch.zeros(0, dtype=torch.long, device=self.device)
        boxes, scores, owner = torch.cat(found_boxes), torch.cat(found_scores), torch.cat(found_owner)
        keep = batched_nms(boxes[:, :4], scores, owner, 0.7)
        boxes, owner = boxes[keep], owner[keep]
        return _square(_regress(boxes[:, :4], boxes[:, 4:])), owner

    def _refine(self, net, images, boxes, owner, side, threshold):
        """Stages 2 and 3: crop each box to ``side`` px, score and regress it; O-Net adds landmarks."""
        if len(boxes) == 0:
            empty = torch.zeros(0, device=self.device)
            return boxes, owner, empty, torch.zeros(0, 5, 2, device=self.device)
        crops = torch.cat([_crop(images[i], boxes[owner == i], side) for i in range(len(images))])
        order = torch.cat([torch.nonzero(owner == i).flatten() for i in range(len(images))])
        boxes, owner = boxes[order], owner[order]
        outputs = net(_normalise(crops))
        prob, reg = outputs[0], outputs[1]
        keep = prob > threshold
        boxes, owner, prob, reg = boxes[keep], owner[keep], prob[keep], reg[keep]
        points = torch.zeros(len(boxes), 5, 2, device=self.device)
        if len(outputs) == 3:
            marks = outputs[2][keep]
            size = (boxes[:, 2:] - boxes[:, :2])[:, None, :]
            points = boxes[:, None, :2] + size * torch.stack([marks[:, :5], marks[:, 5:]], dim=-1)
        boxes = _regress(boxes, reg)
        keep = batched_nms(boxes, prob, owner, 0.7) if len(outputs) == 2 else _nms_min(boxes, prob, owner, 0.7)
        boxes, owner, prob, points = boxes[keep], owner[keep], prob[keep], points[keep]
        return (_square(boxes) if len(outputs) == 2 else boxes), owner, prob, points


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - 127.5) * 0.0078125


def _cells(prob, reg, scale_x, scale_y, threshold):
    """P-Net output cells over ``threshold`` -> (boxes with their offsets (N, 8), scores, batch index)."""
    owner, ys, xs = torch.nonzero(prob > threshold, as_tuple=True)
    scores = prob[owner, ys, xs]
    offsets = reg[owner, :, ys, xs]
    x1, y1 = xs * _STRIDE / scale_x, ys * _STRIDE / scale_y
    x2, y2 = (xs * _STRIDE + _CELL) / scale_x, (ys * _STRIDE + _CELL) / scale_y
    return torch.cat([torch.stack([x1, y1, x2, y2], 1).float(), offsets], 1), scores, owner


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Moves each edge by its offset times the box's width or height."""
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    return boxes + offsets * size


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Each box grown to a square on its longer side, about the same centre."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(1, keepdim=True).values / 2
    return torch.cat([centre - half, centre + half], 1)


def _crop(image: torch.Tensor, boxes: torch.Tensor, side: int) -> torch.Tensor:
    """Each box resampled to side x side; black outside the image, as the paper pads.

    O-Net's 48-px crops are a full area average (every source pixel counts: its landmarks need it);
    R-Net's 24-px crops, often hundreds, take 2x2 samples an output pixel, 5x faster on a phone photo
    and as accurate in the end (scripts/align_accuracy.py moved by under 0.1 px).
    """
    if len(boxes) == 0:
        return image.new_zeros(0, 3, side, side)
    samples = 0 if side == 48 else 2  # 0: adaptive, ceil(box size / side) samples an output pixel
    return roi_align(image[None], [boxes], output_size=side, spatial_scale=1.0, sampling_ratio=samples, aligned=True)


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, owner: torch.Tensor, threshold: float) -> torch.Tensor:
    """NMS where overlap is intersection over the smaller box, so a box inside a better one goes."""
    order = torch.argsort(scores, descending=True)
    boxes, owner = boxes[order], owner[order]
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    overlap = inter / torch.minimum(area[:, None], area[None, :]).clamp(min=1e-6)
    overlap = overlap * (owner[:, None] == owner[None, :])
    kept: list[int] = []
    removed = torch.zeros(len(boxes), dtype=torch.bool)
    for i in range(len(boxes)):
        if removed[i]:
            continue
        kept.append(i)
        removed |= (overlap[i] > threshold).cpu()
    return order[torch.tensor(kept, dtype=torch.long, device=order.device)]
