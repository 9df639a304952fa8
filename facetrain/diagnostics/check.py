"""``facetrain check``: the whole model path and the data, before any training.

The model is built on the meta device (shapes only, no memory), so even a ResNet-152 at 224 px is
checked in a moment. The dataset check decodes every image once, as training would.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from facetrain.config import Config
from facetrain.data import Preprocess, num_classes_problem, sample_records, scan_identities, split_identities
from facetrain.diagnostics.capacity import ClassifierPlan, plan_classifier, ranks_problem
from facetrain.errors import FacetrainError
from facetrain.evaluation import read_pairs
from facetrain.models import build_embedder, build_head, create_torchvision, load_pretrained


@dataclass(frozen=True)
class Stage:
    name: str
    shape: tuple[int, ...]  # per sample, without the batch dimension
    params: int


@dataclass
class CheckReport:
    stages: list[Stage] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    plan: ClassifierPlan | None = None


def model_stages(config: Config, num_classes: int) -> list[Stage]:
    """Each stage of image -> embedding -> logits with its output shape and parameter count."""
    size = config.data.image_size
    model_config = dataclasses.replace(config.model, pretrained=None)  # weights do not change shapes
    with torch.device("meta"):
        embedder = build_embedder(model_config, size)
        head = build_head(config.head, config.model.embedding_dim, num_classes)
        images = torch.empty(2, 3, size, size)
        features = embedder.backbone(images)
        neck = [(name, tuple(out.shape[1:]), sum(p.numel() for m in parts for p in m.parameters()))
                for name, out, parts in embedder.neck.stages(features)]  # fmt: skip

    def count(*modules: torch.nn.Module) -> int:
        return sum(p.numel() for module in modules for p in module.parameters())

    return [
        Stage("input", (3, size, size), 0),
        Stage("backbone", tuple(features.shape[1:]), count(embedder.backbone)),
        *(Stage(name, shape, params) for name, shape, params in neck),
        Stage("head", (num_classes,), count(head)),
    ]


def format_stages(stages: list[Stage]) -> str:
    """One line of shapes (``input 3×112×112 → backbone 512×4×4 → ...``), then a table with parameters."""
    path = " → ".join(f"{stage.name} {_dims(stage.shape)}" for stage in stages)
    rows = [f"  {'stage':<12}{'output':>16}{'parameters':>14}"]
    rows += [f"  {stage.name:<12}{_dims(stage.shape):>16}{stage.params:>14,}" for stage in stages]
    return path + "\n" + "\n".join(rows)


def _dims(shape: tuple[int, ...]) -> str:
    return "×".join(str(d) for d in shape)


def run_check(
    config: Config, progress: bool = False, world_size: int = 1, num_classes: int | None = None
) -> CheckReport:
    """Checks the model path, the pretrained weights, the dataset and every pairs list.

    ``num_classes`` plans for that many identities without reading the data (which is not checked).
    The classifier's memory per rank is planned for ``world_size`` ranks.
    """
    report = CheckReport()
    if num_classes is None:
        num_classes = _check_data(config, report, progress, world_size)
    else:
        report.facts.append(f"data not read: planning for {num_classes:,} identities (--num-classes)")
    if num_classes:
        report.plan = plan_classifier(config, num_classes, world_size)
        if problem := ranks_problem(world_size, num_classes):
            report.problems.append(problem)
    try:
        report.stages = model_stages(config, num_classes or config.head.num_classes or 0)
    except FacetrainError as exc:
        report.problems.append(str(exc))
    if not num_classes and report.stages:
        report.stages.pop()  # the head's size comes from the dataset, which could not be read
    if config.model.pretrained:
        try:
            load_pretrained(create_torchvision(config.model.backbone), config.model.pretrained, config.model.backbone)
        except FacetrainError as exc:
            report.problems.append(str(exc))
    for index, spec in enumerate(config.eval.sets):
        try:
            pairs = read_pairs(spec.pairs, spec.images, spec.format)
            name = spec.name or pairs.name
            report.facts.append(
                f"eval.sets[{index}] {name}: {len(pairs.is_same)} pairs, {len(pairs.images)} images, all present"
            )
        except FacetrainError as exc:
            report.problems.append(f"eval.sets[{index}]: {exc}")
    return report


def _check_records(identities: list, report: CheckReport) -> None:
    """A .rec is too large to decode whole: its layout, and the size of a sample of its images."""
    source = identities[0][1].source
    report.facts.append(f"'{source.path}': {source.detail}")
    sizes, undecodable, unreadable = sample_records(identities)
    shown = ", ".join(f"{width}x{height} ({count})" for (width, height), count in sizes.most_common(3))
    sampled = sum(sizes.values()) + len(undecodable) + len(unreadable)
    report.facts.append(f"image size of {sampled} records sampled evenly: {shown or 'none'}")
    if undecodable:
        report.problems.append(
            f"{len(undecodable)} of the sampled records hold an image that cannot be decoded (training replaces such a "
            f"record by another image of its identity, and counts it); "
            f"the first: {undecodable[0]}"
        )
    if unreadable:
        report.problems.append(
            f"{len(unreadable)} of the sampled records cannot be read, and training stops on them; the first: "
            f"{unreadable[0]}"
        )


def _check_data(config: Config, report: CheckReport, progress: bool, world_size: int = 1) -> int | None:
    data = config.data
    try:
        everything = scan_identities(data.root)
        training, held_out = split_identities(data, everything)
    except FacetrainError as exc:
        report.problems.append(str(exc))
        return None
    small = [name for name, images in everything if len(images) < data.min_images_per_identity]
    report.facts.append(
        f"data.root: {len(everything)} identities, {sum(len(images) for _, images in everything)} images; "
        f"{len(training)} for training, {len(held_out)} held out; {len(small)} below "
        f"data.min_images_per_identity={data.min_images_per_identity} (dropped)"
    )
    used = training + held_out
    files = [path for _, images in used if isinstance(images, list) for path in images]
    records = [item for item in used if not isinstance(item[1], list)]
    if records:
        _check_records(records, report)
    unreadable = []
    preprocess = Preprocess.from_config(data)  # exactly what training does, centre crop included
    for path in tqdm(files, desc="decoding images", disable=not progress or not files, leave=False):
        try:
            preprocess.load(path)
        except FacetrainError as exc:
            unreadable.append(str(exc))
    if unreadable:
        report.problems.append(f"{len(unreadable)} of {len(files)} images cannot be used; the first: {unreadable[0]}")
    problem = num_classes_problem(config.head.num_classes, len(training))
    if problem:
        report.problems.append(problem)
    batch = config.train.batch_size * world_size
    batches = sum(len(images) for _, images in training) // batch
    ranks = f" ({world_size} ranks x {config.train.batch_size})" if world_size > 1 else ""
    if batches == 0:
        images = sum(len(paths) for _, paths in training)
        what = f"the global batch of {batch}{ranks}" if world_size > 1 else f"train.batch_size={batch}"
        fix = "lower train.batch_size or the number of ranks" if world_size > 1 else "lower train.batch_size"
        report.problems.append(f"{what} is larger than the training set ({images} images): {fix}")
    else:
        report.facts.append(f"{batches} batches of {batch}{ranks} per epoch, "
                            f"{math.ceil(batches / config.train.grad_accum_steps)} optimizer steps")  # fmt: skip
    return len(training)
