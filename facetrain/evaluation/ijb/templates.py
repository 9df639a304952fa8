"""From image features to template features to pair scores: IJB's set-to-set matching, vectorised.

Each image's feature is the sum of the features of its aligned crop and of the crop's mirror. Then,
as insightface's IJB evaluation does:

1. keep the feature's norm (a quality weight: blurred or non-face crops get small features) or
   normalise it;
2. multiply by the detector score (another quality weight), or not;
3. average the images of each media (a still, or the frames of one video) within a template;
4. sum the media of each template, and normalise the sum;
5. score a template pair by the cosine of the two template features.

Memory is bounded: images are pooled in chunks with ``index_add_``, and pairs are scored in chunks,
either as a block of a matrix product (pairs that share their templates) or row by row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from facetrain.errors import DataError
from facetrain.evaluation.ijb.protocol import require_templates

IMAGE_CHUNK = 65_536
PAIR_CHUNK = 4_194_304
ROW_CHUNK = 65_536
BLOCK_SCORES = 1 << 25  # scores in one block of the product (128 MB as float32)
DENSE_RATIO = 256  # a block product is used when it computes at most this many scores per pair wanted


@dataclass(frozen=True)
class PoolMode:
    """The two switches on which published IJB numbers differ; the defaults are the field's."""

    norm: bool = True  # keep each image feature's norm as a weight (False: normalise it first)
    detector_score: bool = True  # weight each image by its detector score

    def describe(self) -> str:
        norm = "feature norm kept (quality weight)" if self.norm else "image features normalised"
        score = "weighted by detector score" if self.detector_score else "detector score unused"
        return f"{norm}, {score}, media averaged, templates summed"


@dataclass(frozen=True)
class Templates:
    ids: np.ndarray  # (T,) int64, sorted
    features: torch.Tensor  # (T, D) float32, L2-normalised

    def rows(self, ids: np.ndarray, source: str) -> np.ndarray:
        """Row of each id in ``features``; one line naming the first id that has no images."""
        require_templates(ids, self.ids, source)
        return np.searchsorted(self.ids, ids)


def pool_templates(
    features: torch.Tensor,
    templates: np.ndarray,
    medias: np.ndarray,
    scores: np.ndarray,
    mode: PoolMode,
    progress: Callable[[int], None] | None = None,
) -> Templates:
    """Template features of every template in ``templates`` (one entry per image, as ``medias``).

    Args:
        features: (N, D) image features (crop + mirror), in the row order of the meta files.
        templates, medias, scores: (N,) template id, media id and detector score of each image.
    """
    if features.dim() != 2 or features.shape[0] != len(templates):
        raise DataError(
            f"image features have shape {tuple(features.shape)}, but the meta files list {len(templates)} images: "
            f"give an N x D array with N = {len(templates)}, in the order of the name_5pts_score file"
        )
    template_ids, template_of_image = np.unique(templates, return_inverse=True)
    key = template_of_image.astype(np.int64) * (int(medias.max()) - int(medias.min()) + 1) + (medias - medias.min())
    media_keys, media_of_image = np.unique(key, return_inverse=True)
    template_of_media = torch.from_numpy(template_of_image[np.unique(media_of_image, return_index=True)[1]])
    media_index = torch.from_numpy(media_of_image.astype(np.int64))
    weights = torch.from_numpy(np.asarray(scores, dtype=np.float32))
    sums = torch.zeros(len(media_keys), features.shape[1])
    for start in range(0, len(templates), IMAGE_CHUNK):
        chunk = features[start : start + IMAGE_CHUNK].float()
        if not mode.norm:
            chunk = F.normalize(chunk, dim=1)
        if mode.detector_score:
            chunk = chunk * weights[start : start + IMAGE_CHUNK, None]
        sums.index_add_(0, media_index[start : start + IMAGE_CHUNK], chunk)
        if progress is not None:
            progress(len(chunk))
    counts = torch.bincount(media_index, minlength=len(media_keys)).float()
    sums /= counts[:, None]  # media means
    pooled = torch.zeros(len(template_ids), features.shape[1]).index_add_(0, template_of_media, sums)
    return Templates(template_ids, F.normalize(pooled, dim=1))


def score_pairs(
    templates: Templates,
    first: np.ndarray,
    second: np.ndarray,
    source: str,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Cosine score of every template pair, (P,) float32, in the order given.

    Pairs are grouped by their first template. For a group of first templates, the scores against
    every second template they meet are one block of a matrix product when that computes at most
    ``DENSE_RATIO`` scores per pair wanted (a product runs at the CPU's arithmetic speed, a gather at
    its memory speed), else the pairs are scored row by row.
    """
    left, right = templates.rows(first, source), templates.rows(second, source)
    order = np.argsort(left, kind="stable")
    left, right = left[order], right[order]
    bounds = np.flatnonzero(np.diff(left)) + 1  # where each first template's pairs start
    starts = np.concatenate([[0], bounds])
    rows_per_block = max(1, BLOCK_SCORES // max(len(templates.ids), 1))
    scores = torch.empty(len(first))
    for group in range(0, len(starts), rows_per_block):
        begin = int(starts[group])
        end = int(starts[group + rows_per_block]) if group + rows_per_block < len(starts) else len(left)
        for lo in range(begin, end, PAIR_CHUNK):
            hi = min(end, lo + PAIR_CHUNK)
            scores[torch.from_numpy(order[lo:hi])] = _chunk_scores(templates.features, left[lo:hi], right[lo:hi])
            if progress is not None:
                progress(hi - lo)
    return scores


def _chunk_scores(features: torch.Tensor, left: np.ndarray, right: np.ndarray) -> torch.Tensor:
    rows, row_of = np.unique(left, return_inverse=True)
    columns, column_of = np.unique(right, return_inverse=True)
    if len(rows) * len(columns) <= DENSE_RATIO * len(left):
        block = features[torch.from_numpy(rows)] @ features[torch.from_numpy(columns)].T
        return block[torch.from_numpy(row_of), torch.from_numpy(column_of)]
    out = torch.empty(len(left))
    for start in range(0, len(left), ROW_CHUNK):
        a = features[torch.from_numpy(left[start : start + ROW_CHUNK])]
        b = features[torch.from_numpy(right[start : start + ROW_CHUNK])]
        out[start : start + ROW_CHUNK] = torch.einsum("nd,nd->n", a, b)
    return out
