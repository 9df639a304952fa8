"""Classifier memory per rank, for a planned run: weights, gradient, optimizer state and one step's logits.

Arithmetic only (no tensor is built), so 10M identities over 8 ranks is planned in a moment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from facetrain.config import Config, head_options

FLOAT_BYTES = 4  # the classifier and its state are float32 under any AMP setting
LOGIT_COPIES = 3  # cosines, margin logits and their exponentials live at once in a step


@dataclass(frozen=True)
class ClassifierPlan:
    classes: int
    world: int
    embedding_dim: int
    rows_per_class: int
    sample_rate: float
    optimizer_copies: int  # state tensors per weight: SGD momentum 1 (0 without), AdamW 2
    optimizer_name: str
    global_batch: int
    bias: bool = False  # softmax: one bias per class

    @property
    def classes_per_rank(self) -> int:
        return math.ceil(self.classes / self.world)

    @property
    def weight_bytes(self) -> int:
        return self.classes_per_rank * self.rows_per_class * (self.embedding_dim + self.bias) * FLOAT_BYTES

    @property
    def sampled_classes(self) -> int:
        return min(self.classes_per_rank, math.ceil(self.sample_rate * self.classes_per_rank))

    @property
    def logit_bytes(self) -> int:
        return self.global_batch * self.sampled_classes * self.rows_per_class * LOGIT_COPIES * FLOAT_BYTES

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes * (2 + self.optimizer_copies) + self.logit_bytes


def plan_classifier(config: Config, classes: int, world: int) -> ClassifierPlan:
    train = config.train
    if train.optimizer == "adamw":
        copies, name = 2, "AdamW moments"
    else:
        copies, name = (1, "SGD momentum") if train.momentum > 0 else (0, "plain SGD")
    return ClassifierPlan(
        classes=classes,
        world=world,
        embedding_dim=config.model.embedding_dim,
        rows_per_class=int(head_options(config.head).get("k", 1)),
        sample_rate=config.head.sample_rate,
        optimizer_copies=copies,
        optimizer_name=name,
        global_batch=train.batch_size * world,
        bias=config.head.type == "softmax",
    )


def format_plan(plan: ClassifierPlan) -> str:
    sub = f" x {plan.rows_per_class} sub-centres" if plan.rows_per_class > 1 else ""
    lines = [
        f"classifier over {plan.world} rank{'s' if plan.world > 1 else ''}: {plan.classes:,} classes{sub} x "
        f"{plan.embedding_dim}, {plan.classes_per_rank:,} classes per rank",
        f"  weights {_size(plan.weight_bytes)}, gradient {_size(plan.weight_bytes)}, {plan.optimizer_name} "
        f"{_size(plan.weight_bytes * plan.optimizer_copies)} per rank",
        f"  one step's logits: global batch {plan.global_batch} x {plan.sampled_classes:,} scored classes "
        f"(head.sample_rate {plan.sample_rate:g}) = {_size(plan.logit_bytes)} per rank",
        f"  classifier total about {_size(plan.total_bytes)} per rank, besides the embedder and its activations",
    ]
    return "\n".join(lines)


def _size(count: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} B"


def ranks_problem(world_size: int, num_classes: int) -> str | None:
    """The problem when more ranks than identities would share the classifier, else None."""
    if world_size <= num_classes:
        return None
    return (
        f"--world-size {world_size} is more ranks than the {num_classes} training identities: each rank "
        "holds a slice of the classifier, so use at most as many processes as identities"
    )
