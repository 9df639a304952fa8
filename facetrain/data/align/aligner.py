"""Photos to aligned crops: decode, detect, choose the face, fit it to the template and warp.

The crops are (3, H, W) uint8 tensors; a photo with several faces gives the chosen one, or all of
them with ``all_faces``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from facetrain.data.align.detect import DETECT_SIDE, Face, FaceDetector
from facetrain.data.align.geometry import umeyama, warp
from facetrain.data.align.options import check_options, template
from facetrain.data.images import load_image
from facetrain.errors import DataError


@dataclass
class Aligned:
    """What one photo gave: its crops, and why it gave none or had a choice to make."""

    crops: list[torch.Tensor] = field(default_factory=list)
    faces: int = 0  # faces detected
    status: str = "aligned"  # aligned | multiple_faces | no_face | center_crop | unreadable
    detail: str = ""
    points: np.ndarray | None = None  # the chosen face's 5 landmarks, in the photo's pixels


def choose_face(faces: list[Face], width: int, height: int) -> int:
    """The index of the largest face near the centre: box area minus twice the squared offset of its
    centre from the image centre (the rule insightface's LFW alignment used)."""
    centre = np.array([width / 2, height / 2])
    merit = [
        float((face.box[2] - face.box[0]) * (face.box[3] - face.box[1]))
        - 2.0 * float((((face.box[:2] + face.box[2:]) / 2 - centre) ** 2).sum())
        for face in faces
    ]
    return int(np.argmax(merit))


def centre_crop(pixels: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The largest central region of the crop's aspect, resized to width x height (the fallback)."""
    in_h, in_w = pixels.shape[-2:]
    scale = min(in_w / width, in_h / height)
    box = [max(1, round(height * scale)), max(1, round(width * scale))]
    return TF.resize(TF.center_crop(pixels, box), [height, width], antialias=True)


class Aligner:
    """Detects faces in photos and warps them onto the ArcFace template of a given crop size."""

    def __init__(
        self,
        device: torch.device | str = "cpu",
        size: tuple[int, int] = (112, 112),
        min_face: int = 20,
        all_faces: bool = False,
        fallback: str = "none",
    ) -> None:
        check_options(min_face, fallback)
        self.width, self.height = size
        self.points = template(self.width, self.height)
        self.detector = FaceDetector(device, min_face=min_face)
        self.all_faces, self.fallback = all_faces, fallback

    def align_files(self, paths: list[Path]) -> list[Aligned]:
        """Each photo's crops (unreadable ones get status 'unreadable' and the reason)."""
        results: list[Aligned | None] = [None] * len(paths)
        photos, where = [], []
        for index, path in enumerate(paths):
            try:
                photos.append(Photo.open(path))
                where.append(index)
            except DataError as exc:
                results[index] = Aligned(status="unreadable", detail=str(exc))
        for index, aligned in zip(where, self.align_photos(photos), strict=True):
            results[index] = aligned
        return [result for result in results if result is not None]

    def align_photos(self, photos: list[Photo]) -> list[Aligned]:
        found = self.detector.detect_batch([photo.pixels for photo in photos], [photo.scale for photo in photos])
        return [self._crops(photo, faces) for photo, faces in zip(photos, found, strict=True)]

    def crop_file(self, path: str | Path) -> Image.Image:
        """The chosen face of one photo as an RGB crop (``verify --align``, ``embed --align``).

        A ``DataError`` says when the photo has no face the detector can find.
        """
        aligned = self.align_photos([Photo.open(Path(path))])[0]
        if not aligned.crops:
            raise DataError(
                f"no face of at least {self.detector.min_face} px found in '{path}': give a photo with a clear, "
                "frontal face, or leave out --align if the image is already a face crop"
            )
        return Image.fromarray(aligned.crops[0].permute(1, 2, 0).contiguous().numpy())

    def _crops(self, photo: Photo, faces: list[Face]) -> Aligned:
        height, width = photo.pixels.shape[-2:]
        if not faces:
            if self.fallback == "center":
                crop = centre_crop(photo.pixels, self.width, self.height)
                return Aligned([crop], 0, "center_crop", "no face found: wrote the centre of the image")
            return Aligned([], 0, "no_face", f"no face of at least {self.detector.min_face} px found")
        if self.all_faces:
            chosen = list(range(len(faces)))
        else:
            chosen = [choose_face(faces, width, height)]
        crops = [self._warp(photo, faces[index].points) for index in chosen]
        result = Aligned(crops, len(faces), points=(faces[chosen[0]].points + 0.5) / photo.scale - 0.5)
        if len(faces) > 1 and not self.all_faces:
            box = np.round(faces[chosen[0]].box / photo.scale).astype(int).tolist()
            result.status, result.detail = "multiple_faces", f"{len(faces)} faces: kept the one at {box}"
        return result

    def _warp(self, photo: Photo, points: np.ndarray) -> torch.Tensor:
        matrix = umeyama(points, self.points)
        scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        if photo.scale < 1.0 and scale > 1.0:  # the crop would enlarge a reduced decode: use every pixel
            full = photo.full()
            matrix = umeyama((points + 0.5) / photo.scale - 0.5, self.points)
            return warp(full, matrix, self.width, self.height)
        return warp(photo.pixels, matrix, self.width, self.height)


@dataclass
class Photo:
    """A decoded photo, upright; a large JPEG is decoded at a fraction of its size (``scale``)."""

    pixels: torch.Tensor  # (3, H, W) uint8
    path: Path | None
    scale: float  # decoded size / the file's size

    @classmethod
    def open(cls, path: Path) -> Photo:
        image = load_image(path, min_side=DETECT_SIDE // 2, upright=True)
        with Image.open(path) as header:  # reads the header only
            ratio = max(header.size) / max(image.size)
        # A reduced JPEG decode scales by exactly 1/2, 1/4 or 1/8 (a side that does not divide is rounded
        # up), so the factor is that power of two, not the ratio of the sides.
        scale = 2.0 ** -round(math.log2(ratio)) if ratio > 1 else 1.0
        return cls(TF.pil_to_tensor(image), path, scale)

    def full(self) -> torch.Tensor:
        assert self.path is not None
        return TF.pil_to_tensor(load_image(self.path, upright=True))


def crop_with_landmarks(path: str | Path, points: np.ndarray, width: int = 112, height: int = 112) -> torch.Tensor:
    """The (3, height, width) uint8 ArcFace crop of the photo at ``path`` whose five landmarks
    (left eye, right eye, nose, left and right mouth corners, in pixel-index units of the photo turned
    upright by its EXIF orientation, as OpenCV's imread reads it) are given: what a benchmark that ships
    its landmarks (IJB) asks for, with no detection."""
    photo = Photo.open(Path(path))
    points = np.asarray(points, np.float64)
    matrix = umeyama((points + 0.5) * photo.scale - 0.5, template(width, height))
    if photo.scale < 1.0 and float(np.sqrt(abs(np.linalg.det(matrix[:, :2])))) > 1.0:
        return warp(photo.full(), umeyama(points, template(width, height)), width, height)
    return warp(photo.pixels, matrix, width, height)
