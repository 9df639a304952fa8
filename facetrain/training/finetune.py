"""Fine-tuning: a new run that starts from another checkpoint's embedder (``model.init_from``), class
centres imprinted from it (``head.init: imprint``), and the head trained alone for the first epochs
(``train.freeze_embedder_epochs``).

A mixin of ``Trainer``: it reads the trainer's ``config``, ``embedder``, ``head``, ``model``,
``eval_model``, ``images``, ``device``, ``precision``, ``memory_format``, ``sharded``, ``main``,
``epoch`` and ``resume_path``. A resumed run never re-applies either starting point: its checkpoint
holds the embedder and head it continues.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from facetrain.config import Config, ModelConfig
from facetrain.data import as_batch, model_input, quiet_worker
from facetrain.errors import CheckpointError, ConfigError
from facetrain.models import ShardedHead, first_mismatch, load_weights, read_checkpoint
from facetrain.runtime import autocast
from facetrain.training.preflight import check_init_from_place

log = logging.getLogger("facetrain")

# The settings that fix the embedder's weights' shapes, as the checkpoint's config and this one spell them.
_SHAPE_KEYS = ("backbone", "embedding_dim", "pool_size")


def read_init_from(config: Config) -> dict[str, Any]:
    """The checkpoint at ``model.init_from``, once its backbone and embedding size are known to be this
    config's (read before the data, so a mismatch costs no dataset scan). Its tensors stay memory-mapped:
    a trained run's head is never read."""
    path = Path(str(config.model.init_from))
    try:
        state = read_checkpoint(path, mmap=True)
    except CheckpointError as exc:
        raise CheckpointError(f"model.init_from: {exc}") from None
    saved_model, saved_data = state["config"].get("model"), state["config"].get("data")
    if not isinstance(saved_model, dict) or not isinstance(saved_data, dict):
        raise CheckpointError(f"model.init_from: checkpoint '{path}' has no model or data section in its config")
    defaults = ModelConfig()
    theirs = {key: saved_model.get(key, getattr(defaults, key)) for key in _SHAPE_KEYS}
    for key in _SHAPE_KEYS:
        if theirs[key] != getattr(config.model, key):
            raise ConfigError(
                f"model.init_from: '{path}' holds {_describe(theirs)}; this config has model.{key}="
                f"{getattr(config.model, key)}: set model.{key}: {theirs[key]} (a fine-tune keeps the embedder's "
                "architecture)"
            )
    return state


def load_init_embedder(embedder: nn.Module, config: Config, state: dict[str, Any] | None = None) -> None:
    """Loads the embedder of the checkpoint at ``model.init_from`` (``state``, when read already) into
    ``embedder``. Another image size or crop than the checkpoint's is allowed and said."""
    path = Path(str(config.model.init_from))
    state = read_init_from(config) if state is None else state
    try:
        load_weights(embedder, state, "embedder", path)
    except CheckpointError as exc:
        reason = first_mismatch(embedder.state_dict(), state["embedder"])
        if reason == "unknown difference":  # the weights fit; they hold NaN (the message says so)
            raise CheckpointError(f"model.init_from: {exc}") from None
        raise CheckpointError(
            f"model.init_from: checkpoint '{path}': its embedder weights do not fit the {config.model.backbone} its "
            f"own config names ({reason}): the file was altered since it was written; use another checkpoint"
        ) from None
    _say_input_changes(path, state["config"]["data"], config)
    model = {key: getattr(config.model, key) for key in _SHAPE_KEYS}
    source = state.get("origin", {}).get("kind") if isinstance(state.get("origin"), dict) else None
    trained = f"imported from {source} weights" if source else f"trained {state.get('step', '?')} steps"
    log.info(
        "model.init_from: the embedder of %s (%s, %s) starts this run; the head is new (head.init=%s)",
        path, _describe(model), trained, config.head.init,
    )  # fmt: skip


def _describe(model: dict[str, Any]) -> str:
    pool = f", pool_size {model['pool_size']}" if model["pool_size"] != 1 else ""
    return f"a {model['backbone']} with {model['embedding_dim']}-d embeddings{pool}"


def _say_input_changes(path: Path, saved_data: dict[str, Any], config: Config) -> None:
    """The networks take any image size, but an embedder sees faces at the scale it learned best."""
    size, crop = saved_data.get("image_size"), saved_data.get("center_crop")
    if size == config.data.image_size and crop == config.data.center_crop:
        return
    log.warning(
        "model.init_from: %s was trained on %s px images (data.center_crop %s), this run uses %d px (%s): the "
        "embedder adapts while it trains, but starts less accurate; set data.image_size: %s and "
        "data.center_crop: %s to match it",
        path, size, crop, config.data.image_size, config.data.center_crop, size, crop,
    )  # fmt: skip


def center_rows(head: nn.Module) -> tuple[nn.Parameter, nn.Parameter | None, int, int]:
    """(class-centre weight, bias or None, rows per class, first class) of a head or of a rank's slice of one."""
    first = 0
    if isinstance(head, ShardedHead):
        head, first = head.head, head.first
    if hasattr(head, "class_centers"):  # every margin head; subcenter_arcface keeps K rows per class
        return head.class_centers, None, head.centers_per_class, first
    return head.classifier.weight, head.classifier.bias, 1, first  # softmax


@torch.no_grad()
def class_means(
    embedder: nn.Module,
    images: Any,
    classes: tuple[int, int],
    batch_size: int,
    workers: int,
    device: torch.device,
    precision: Any,
    memory_format: torch.memory_format = torch.preserve_format,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit mean of the unit embeddings per class (E, D), images per class (E,)) for classes
    ``first..end-1`` of ``images`` (a ``TrainImages``), in eval mode and without flips."""
    first, end = classes
    labels = images.labels
    chosen = torch.nonzero((labels >= first) & (labels < end)).flatten()
    loader = DataLoader(
        images, batch_size=batch_size, sampler=_Unflipped(chosen), num_workers=workers,
        collate_fn=as_batch, worker_init_fn=quiet_worker, pin_memory=device.type == "cuda",
    )  # fmt: skip
    was_training = embedder.training
    embedder.eval()
    sums, counts = None, torch.zeros(end - first, dtype=torch.int64, device=device)
    try:
        for pixels, _, batch_labels in loader:
            with autocast(device, precision):
                embeddings = embedder(model_input(pixels, None, device, memory_format))
            unit = F.normalize(embeddings.float(), dim=1)  # (B, D)
            rows = batch_labels.to(device) - first
            if sums is None:
                sums = torch.zeros(end - first, unit.shape[1], device=device)
            sums.index_add_(0, rows, unit)
            counts += torch.bincount(rows, minlength=end - first)
    finally:
        embedder.train(was_training)
    if sums is None:
        raise ConfigError("head.init=imprint: no training images to imprint from")
    return F.normalize(sums, dim=1), counts


class _Unflipped:
    """The loader's keys for ``indices`` (a tensor): (index, no flip), made as they are read, not held as a list."""

    def __init__(self, indices: torch.Tensor) -> None:
        self.indices = indices

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        return ((int(index), False) for index in self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# Sub-centres after the first start about this far (the norm of a random offset to a unit centre, so about
# 3 degrees) from their class mean: identical sub-centres would tie under Sub-center ArcFace's max, and only
# the first would receive gradients at first.
SUBCENTER_SPREAD = 0.05


@torch.no_grad()
def imprint(head: nn.Module, means: torch.Tensor, counts: torch.Tensor, seed: int = 0) -> int:
    """Sets each class centre of ``head`` to its row of ``means`` (E, D), the head's own classes in order;
    classes without images keep theirs. Softmax: its weight row, bias 0. Sub-center ArcFace: the first
    sub-centre is the mean, the others the mean plus a small seeded spread. Returns how many classes."""
    weight, bias, per_class, first = center_rows(head)
    found = counts > 0
    rows = found.repeat_interleave(per_class)
    centres = means[found].repeat_interleave(per_class, dim=0).float()  # (n * K, D)
    if per_class > 1:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + first)
        spread = torch.randn(centres.shape, generator=generator).to(centres.device)
        spread *= SUBCENTER_SPREAD / centres.shape[1] ** 0.5
        spread.view(-1, per_class, centres.shape[1])[:, 0] = 0.0  # the first sub-centre: the mean itself
        centres = F.normalize(centres + spread, dim=1)
    weight[rows] = centres.to(weight.dtype)
    if bias is not None:
        bias[found] = 0.0
    return int(found.sum())


class FineTune:
    config: Config
    embedder: nn.Module
    head: nn.Module
    model: nn.Module
    eval_model: nn.Module
    images: Any
    device: torch.device
    precision: Any
    memory_format: torch.memory_format
    main: bool
    sharded: bool
    epoch: int
    batch_in_epoch: int
    resume_path: Path | None
    init_state: dict[str, Any] | None

    def _read_init_from(self) -> None:
        """``model.init_from``'s checkpoint, in a new run only, checked against this config before the data."""
        self.init_state = None
        if self.config.model.init_from and self.resume_path is None:
            check_init_from_place(self.config)
            self.init_state = read_init_from(self.config)

    def _init_embedder(self) -> None:
        """``model.init_from``, in a new run only; says the embedder's learning rate when it is not the head's."""
        if self.init_state is not None:
            load_init_embedder(self.embedder, self.config, self.init_state)
            self.init_state = None  # the memory-mapped file is closed once nothing refers to it
        train = self.config.train
        if train.embedder_lr_scale != 1.0 and self.main:
            log.info(
                "train.embedder_lr_scale=%g: the embedder's peak learning rate is %.3g, the head's %.3g",
                train.embedder_lr_scale, train.lr * train.embedder_lr_scale, train.lr,
            )  # fmt: skip

    def _init_head(self) -> None:
        """``head.init: imprint``, in a new run only: each rank fills its own slice of the head from the
        images of its own classes, so no rank holds or exchanges the whole classifier."""
        if self.config.head.init != "imprint" or self.resume_path is not None:
            return
        start = time.perf_counter()
        weight, _, per_class, first = center_rows(self.head)
        classes = (first, first + weight.shape[0] // per_class)
        workers = 0 if self.images.cached else self.config.data.num_workers
        means, counts = class_means(
            self.embedder, self.images, classes, self.config.eval.batch_size, workers, self.device, self.precision,
            self.memory_format,
        )  # fmt: skip
        done = imprint(self.head, means, counts, self.config.seed)
        if self.main:
            slice_note = f" (this process's slice, classes {classes[0]}..{classes[1] - 1})" if self.sharded else ""
            log.info(
                "head.init=imprint: %d class centres%s set to their identities' mean embedding (%d images) in %.1f s",
                done, slice_note, int(counts.sum()), time.perf_counter() - start,
            )  # fmt: skip

    @property
    def embedder_frozen(self) -> bool:
        """Whether this epoch trains the head alone (``train.freeze_embedder_epochs``): a function of the epoch,
        so a run resumed mid-freeze stays frozen."""
        return self.epoch < self.config.train.freeze_embedder_epochs

    def _train_modes(self) -> None:
        """Training mode for the epoch; a frozen embedder stays in eval mode (its BatchNorm statistics too)."""
        self.model.train()
        self.head.train()
        freeze = self.config.train.freeze_embedder_epochs
        if self.embedder_frozen:
            self.embedder.eval()
        if self.main and freeze and self.batch_in_epoch == 0 and self.epoch in (0, freeze):
            state = "frozen: the head trains alone" if self.embedder_frozen else "unfrozen: it trains with the head"
            log.info("epoch %d: the embedder is %s (train.freeze_embedder_epochs=%d)", self.epoch + 1, state, freeze)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The embeddings to train the head on: through the trained model, or, while the embedder is frozen,
        through the bare embedder without autograd (DDP and its gradient hooks are not involved at all)."""
        if not self.embedder_frozen:
            return self.model(images)
        if self.embedder.training:  # an evaluation restored its wrapper's own mode (train.compile)
            self.eval_model.eval()
        with torch.no_grad():
            return self.eval_model(images)
