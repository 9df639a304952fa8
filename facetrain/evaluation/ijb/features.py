"""IJB image features: each loose crop aligned with its five landmarks and embedded with its mirror,
or the same N x D array read from a ``.npy`` file (``--features``) and written to one (``--save-features``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from facetrain.data import Preprocess, crop_with_landmarks, quiet_worker
from facetrain.errors import DataError
from facetrain.evaluation.embedding import feature_batches
from facetrain.evaluation.ijb.meta import FEATURES_FIX, Images
from facetrain.files import atomic_write, require_file
from facetrain.models import PixelEmbedder

CHECK_ROWS = 65_536
CROP = 112  # the landmarks are fitted onto ArcFace's 112 x 112 template, as insightface's evaluation does


class LooseCrops(Dataset):
    """The images of ``name_5pts_score``: read from ``folder``, aligned, sized for the model (uint8)."""

    def __init__(self, folder: Path, images: Images, preprocess: Preprocess) -> None:
        self.folder, self.images, self.preprocess = folder, images, preprocess

    def __len__(self) -> int:
        return len(self.images.names)

    def __getitem__(self, index: int) -> torch.Tensor:
        name = self.images.names[index]
        try:
            crop = crop_with_landmarks(self.folder / name, self.images.landmarks[index], CROP, CROP)
            return self.preprocess.fit(crop, name)
        except DataError as exc:
            raise DataError(f"{exc} (IJB image {index + 1}, '{name}')") from None


def embed_images(
    model: PixelEmbedder, folder: Path, images: Images, batch_size: int, num_workers: int, progress: bool
) -> torch.Tensor:
    """(N, D) float32: each image's feature plus its mirror's, not normalised (the field's "F2")."""
    dataset = LooseCrops(folder, images, model.preprocess)
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=model.device.type == "cuda",
        worker_init_fn=quiet_worker,
    )  # fmt: skip
    features: torch.Tensor | None = None  # filled in place: IJB-C's are 0.96 GB at 512-d
    done = 0
    with tqdm(total=len(dataset), unit="img", desc="embed", disable=not progress, dynamic_ncols=True) as bar:
        for _, fused in feature_batches(model, loader, flip=True):
            assert fused is not None
            if features is None:
                features = torch.empty(len(dataset), fused.shape[1])
            features[done : done + len(fused)] = fused
            done += len(fused)
            bar.update(len(fused))
    assert features is not None and done == len(dataset)
    return features


def read_features(path: str | Path, count: int) -> torch.Tensor:
    """An (N, D) float32 array from ``--features``; never unpickles (``allow_pickle=False``)."""
    file = require_file(path, DataError, "--features", FEATURES_FIX)
    with open(file, "rb") as stream:
        magic = stream.read(6)
    if magic and not magic.startswith((b"\x93NUMPY", b"PK")):  # an .npz (a zip) is named below
        raise DataError(f"--features: '{file}' is not a .npy file (numpy.save writes one): {FEATURES_FIX}")
    try:
        array = np.load(file, allow_pickle=False)
    except EOFError:
        raise DataError(f"--features: '{file}' is empty: {FEATURES_FIX}") from None
    except ValueError as exc:
        message = str(exc)
        objects = "object" in message.lower() or "pickle" in message
        reason = "it holds Python objects" if objects else message.splitlines()[0]
        raise DataError(f"--features: '{file}' cannot be read ({reason}): {FEATURES_FIX}") from None
    except OSError:
        raise DataError(f"--features: '{file}' is not a .npy file: {FEATURES_FIX}") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise DataError(f"--features: '{file}' is an .npz archive, not one array (.npy): {FEATURES_FIX}")
    if array.ndim != 2 or array.shape[1] < 1:
        raise DataError(
            f"--features: '{file}' has shape {array.shape}, not one row of features per image ({count} x D): "
            f"{FEATURES_FIX}"
        )
    if array.shape[0] != count:
        raise DataError(
            f"--features: '{file}' has {array.shape[0]} rows, but the meta files list {count} images: {FEATURES_FIX}"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"--features: '{file}' holds {array.dtype} values: {FEATURES_FIX}")
    features = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))  # no copy for float32
    nonzero = False
    for start in range(0, count, CHECK_ROWS):  # in chunks: a mask of all of IJB-C's features is 240 MB
        chunk = features[start : start + CHECK_ROWS]
        finite = torch.isfinite(chunk).all(dim=1)
        if not bool(finite.all()):
            row = start + int(torch.nonzero(~finite)[0])
            raise DataError(f"--features: '{file}' row {row + 1} is not finite: {FEATURES_FIX}")
        nonzero = nonzero or bool(chunk.any())
    if not nonzero:  # every score would tie: the ranks and TARs would mean nothing
        raise DataError(f"--features: '{file}' holds only zeros: {FEATURES_FIX}")
    return features


def save_features(features: torch.Tensor, path: str | Path) -> Path:
    """Writes the features as ``.npy`` (to a temporary file, then renamed)."""
    target = Path(path)
    with atomic_write(target, "--save-features") as temp, open(temp, "wb") as file:
        np.save(file, features.numpy().astype(np.float32, copy=False))
    return target
