"""Noisy-label finder for Sub-center ArcFace runs (``--report-outliers``, ``facetrain outliers``).

Deng et al., "Sub-center ArcFace: Boosting Face Recognition by Large-scale Noisy Web Faces",
ECCV 2020: with K sub-centres per class, the clean images of a class gather around one of them
(the dominant sub-centre) while mislabelled images and hard outliers sit nearer the others. The
paper treats an image more than 75 degrees from its class's dominant sub-centre as noise.

Here, per training image: its nearest sub-centre of its labelled class; per class, the dominant
sub-centre (nearest for the most of the class's images, ties to the lowest index). An image is
listed when it is nearest a non-dominant sub-centre or more than ``angle_threshold`` degrees from
the dominant one, and flagged as likely noisy in the second case (the paper's rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from facetrain.checkpoint import load_checkpoint, require_head, require_keys
from facetrain.config import config_from_dict
from facetrain.data import FaceDataset, build_datasets, eval_loader
from facetrain.diagnostics.reportable import SUBCENTER_HEAD, require_subcenter_head
from facetrain.errors import ConfigError, DataError, ShapeError
from facetrain.files import write_text
from facetrain.models import build_head, load_model, load_weights

DEFAULT_ANGLE = 75.0  # degrees; the Sub-center ArcFace paper's noise threshold
TSV_COLUMNS = (
    "path", "identity", "nearest_subcenter", "dominant_subcenter",
    "angle_to_dominant_deg", "subcenter_gap_deg", "flagged",
)  # fmt: skip
CHUNK_VALUES = 2**22  # float64 values per step of the math (32 MiB): chunk * K * D stays below it
SUMMARY_PATHS = 5


@dataclass(frozen=True)
class SubcenterAngles:
    """Per-sample sub-centre geometry; every tensor is (N,) except ``dominant_of_class`` (C,)."""

    nearest: torch.Tensor  # index in 0..K-1 of the nearest sub-centre of the sample's own class
    dominant: torch.Tensor  # the dominant sub-centre of the sample's class
    angle_to_dominant: torch.Tensor  # degrees, float64, sample to the dominant sub-centre
    subcenter_gap: torch.Tensor  # degrees, float64, nearest sub-centre to the dominant one (0 if they are one)
    candidate: torch.Tensor  # bool: nearest is not dominant, or flagged
    flagged: torch.Tensor  # bool: angle_to_dominant > threshold
    dominant_of_class: torch.Tensor


def unit_angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle in radians between the rows of two (..., D) tensors of unit (or zero) vectors.

    ``2 * atan2(|a - b|, |a + b|)`` is exact to rounding at every angle, where ``acos(a . b)``
    loses half the digits near 0 and pi and needs a clamp. A zero row is at pi/2 from everything.
    """
    return 2.0 * torch.atan2((a - b).norm(dim=-1), (a + b).norm(dim=-1))


def subcenter_angles(
    embeddings: torch.Tensor, labels: torch.Tensor, subcenters: torch.Tensor, angle_threshold: float = DEFAULT_ANGLE
) -> SubcenterAngles:
    """Nearest and dominant sub-centres, angles and flags for every sample.

    Args:
        embeddings: (N, D) embeddings, unit or raw (they are normalised here).
        labels: (N,) class of each sample, in 0..C-1.
        subcenters: (C, K, D) the head's sub-centres; ``class_centers.view(C, K, D)``.
        angle_threshold: degrees from the dominant sub-centre above which a sample is flagged.
    """
    if subcenters.ndim != 3 or embeddings.ndim != 2 or embeddings.shape[1] != subcenters.shape[2]:
        raise ShapeError(
            f"sub-centres {tuple(subcenters.shape)} (C, K, D) do not fit embeddings {tuple(embeddings.shape)} "
            "(N, D): use the head's class_centers.view(C, K, D) and embeddings of the same D"
        )
    if labels.shape != (embeddings.shape[0],):
        raise ShapeError(f"labels {tuple(labels.shape)} do not fit embeddings {tuple(embeddings.shape)}: one per row")
    num_classes, per_class, _ = subcenters.shape
    labels = labels.detach().long().cpu()
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ShapeError(f"labels must lie in 0..{num_classes - 1} (the sub-centres' classes)")
    centers = F.normalize(subcenters.detach().cpu().to(torch.float64), dim=2)  # a copy, (C, K, D)
    chunk = max(1, CHUNK_VALUES // (per_class * centers.shape[2]))
    # First pass: each sample's nearest sub-centre of its own class (largest cosine; ties -> lowest).
    nearest = torch.empty(len(labels), dtype=torch.long)
    for start in range(0, len(labels), chunk):
        rows = slice(start, start + chunk)
        own = centers[labels[rows]]  # (B, K, D)
        nearest[rows] = torch.einsum("bd,bkd->bk", _unit_rows(embeddings[rows]), own).argmax(dim=1)
    dominant_of_class = dominant_subcenters(labels, nearest, num_classes, per_class)
    dominant = dominant_of_class[labels]
    # Second pass: angles, now that the dominant sub-centres are known.
    to_dominant = torch.empty(len(labels), dtype=torch.float64)
    for start in range(0, len(labels), chunk):
        rows = slice(start, start + chunk)
        to_dominant[rows] = unit_angle(_unit_rows(embeddings[rows]), centers[labels[rows], dominant[rows]])
    angle_to_dominant = torch.rad2deg(to_dominant)
    flagged = angle_to_dominant > angle_threshold
    # (C, K, K) angles between each class's sub-centres, exactly 0 on the diagonal (a - b = 0).
    gaps = torch.rad2deg(unit_angle(centers[:, :, None, :], centers[:, None, :, :]))
    return SubcenterAngles(
        nearest=nearest,
        dominant=dominant,
        angle_to_dominant=angle_to_dominant,
        subcenter_gap=gaps[labels, nearest, dominant],
        candidate=(nearest != dominant) | flagged,
        flagged=flagged,
        dominant_of_class=dominant_of_class,
    )


def _unit_rows(embeddings: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, D) float64 unit rows on the CPU; a zero row stays zero."""
    return F.normalize(embeddings.detach().cpu().to(torch.float64), dim=1)


def dominant_subcenters(labels: torch.Tensor, nearest: torch.Tensor, num_classes: int, per_class: int) -> torch.Tensor:
    """(C,) per class, the sub-centre nearest for the most of its samples; ties (and empty classes) -> lowest."""
    counts = torch.bincount(labels * per_class + nearest, minlength=num_classes * per_class)
    counts = counts.view(num_classes, per_class)  # (C, K) samples nearest each sub-centre
    is_max = counts == counts.max(dim=1, keepdim=True).values
    index = torch.arange(per_class).expand(num_classes, per_class)
    return torch.where(is_max, index, per_class).min(dim=1).values


@dataclass(frozen=True)
class OutlierRecord:
    """One listed training image (nearest a non-dominant sub-centre, or flagged): a row of the TSV."""

    path: str
    identity: str
    nearest_subcenter: int
    dominant_subcenter: int
    angle_to_dominant_deg: float
    subcenter_gap_deg: float
    flagged: bool


@dataclass(frozen=True)
class OutlierReport:
    checkpoint: Path
    images_checked: int
    angle_threshold: float
    candidates: list[OutlierRecord]  # sorted by angle to the dominant sub-centre, largest first

    @property
    def flagged(self) -> int:
        return sum(record.flagged for record in self.candidates)


def find_outliers(
    checkpoint: str | Path, device: torch.device, angle_threshold: float = DEFAULT_ANGLE, batch_size: int | None = None
) -> OutlierReport:
    """Embeds every training image of a ``subcenter_arcface`` checkpoint and lists the candidates.

    The training set is rebuilt from the config saved in the checkpoint and must hold the same
    identities. Images are embedded once, without flip, in eval mode and float32.
    """
    if not 0.0 <= angle_threshold <= 180.0:  # also refuses NaN, which every comparison would let through
        raise ConfigError(f"--angle: must be a number of degrees in [0, 180], got {angle_threshold}")
    path = Path(checkpoint)
    state = load_checkpoint(path)
    fix = f"the report reads the sub-centres of a head.type={SUBCENTER_HEAD} run: give a checkpoint of facetrain train"
    require_head(state, path, "the source of an outlier report", fix)
    config = config_from_dict(state["config"], source=f"config inside '{path}'")
    require_subcenter_head(config, f"checkpoint '{path}'")
    require_keys(state, ("class_names",), path, "the source of an outlier report")
    dataset = build_datasets(config.data).train
    check_same_identities(state["class_names"], dataset.class_names, path, config.data.root)
    embedder = load_model(path, device, state=state).embedder
    head = build_head(config.head, config.model.embedding_dim, len(state["class_names"]))
    load_weights(head, state, "head", path)
    embeddings = embed_dataset(embedder, dataset, device, batch_size or config.eval.batch_size, config.data.num_workers)
    subcenters = head.class_centers.detach().view(head.num_classes, head.centers_per_class, -1)  # (C, K, D)
    labels = torch.tensor(dataset.labels, dtype=torch.long)
    angles = subcenter_angles(embeddings, labels, subcenters, angle_threshold)
    identities = [dataset.class_names[label] for label in dataset.labels]
    records = candidate_records(angles, [dataset.name(index) for index in range(len(dataset))], identities)
    return OutlierReport(path, len(dataset), angle_threshold, records)


def candidate_records(angles: SubcenterAngles, paths: list[str], identities: list[str]) -> list[OutlierRecord]:
    """The listed samples (nearest a non-dominant sub-centre, or flagged), furthest from the dominant one first."""
    records = [
        OutlierRecord(
            path=paths[index],
            identity=identities[index],
            nearest_subcenter=int(angles.nearest[index]),
            dominant_subcenter=int(angles.dominant[index]),
            angle_to_dominant_deg=float(angles.angle_to_dominant[index]),
            subcenter_gap_deg=float(angles.subcenter_gap[index]),
            flagged=bool(angles.flagged[index]),
        )
        for index in torch.nonzero(angles.candidate).flatten().tolist()
    ]
    records.sort(key=lambda record: (-record.angle_to_dominant_deg, record.path))
    return records


def check_same_identities(saved: list[str], current: list[str], checkpoint: Path, root: str) -> None:
    """The head's rows are the checkpoint's classes: the rebuilt training set must list the same ones."""
    if list(saved) == list(current):
        return
    missing = [name for name in saved if name not in set(current)]
    added = [name for name in current if name not in set(saved)]
    changes = [f"{what} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
               for what, names in (("lacks", missing), ("adds", added)) if names]  # fmt: skip
    difference = "; ".join(changes) or "the same names, split otherwise"
    raise DataError(
        f"checkpoint '{checkpoint}' was trained on {len(saved)} identities of data.root '{root}'; that folder now "
        f"gives {len(current)} training identities ({difference}): restore the training folder as it was "
        "(the report needs the same identities), or train a new run on it"
    )


@torch.no_grad()
def embed_dataset(
    embedder: torch.nn.Module, dataset: FaceDataset, device: torch.device, batch_size: int, num_workers: int
) -> torch.Tensor:
    """(N, D) float32 embeddings of every image in dataset order, no flip, in eval mode."""
    was_training = embedder.training
    embedder.eval()
    outputs = []
    try:
        for images, _labels in eval_loader(dataset, batch_size, num_workers, pin_memory=device.type == "cuda"):
            outputs.append(embedder(images.to(device, non_blocking=True)).float().cpu())
    finally:
        embedder.train(was_training)
    return torch.cat(outputs)


def write_outliers_tsv(report: OutlierReport, out: str | Path) -> Path:
    """Writes the candidates as TSV (a header row, then one row each), atomically."""
    target = Path(out)
    lines = ["\t".join(TSV_COLUMNS)]
    for record in report.candidates:
        lines.append(
            f"{record.path}\t{record.identity}\t{record.nearest_subcenter}\t{record.dominant_subcenter}\t"
            f"{record.angle_to_dominant_deg:.4f}\t{record.subcenter_gap_deg:.4f}\t{str(record.flagged).lower()}"
        )
    return write_text(target, "\n".join(lines) + "\n", "--out")


def format_summary(report: OutlierReport) -> str:
    """Counts, then the images furthest from their class's dominant sub-centre."""
    lines = [
        f"outliers: {report.images_checked} images checked, {len(report.candidates)} listed (nearest a "
        f"non-dominant sub-centre, or flagged), {report.flagged} flagged over {report.angle_threshold:g} degrees "
        "from the dominant one"
    ]
    for record in report.candidates[:SUMMARY_PATHS]:
        mark = "  flagged" if record.flagged else ""
        lines.append(f"  {record.angle_to_dominant_deg:6.2f} deg  {record.path}{mark}")
    return "\n".join(lines)
