"""What a multi-process run adds to training, kept out of the trainer's way.

- DistributedDataParallel around the embedder (SyncBatchNorm with ``model.sync_bn``).
- The gradient norm over every rank: the embedder's gradients are the same everywhere after DDP,
  each rank's slice of the head is its own, so their squares are summed across ranks.
- Checkpoint state that does not depend on the world size: the head's slices and their optimizer
  state are joined on the main rank into the whole head's, and cut again on loading.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from facetrain import distributed
from facetrain.models import ROW_KEYS, ShardedHead

log = logging.getLogger("facetrain")


def wrap_embedder(embedder: nn.Module, sync_bn: bool, device: torch.device) -> nn.Module:
    """The embedder as every rank trains it: DDP when there are several ranks, else unchanged."""
    if distributed.world_size() == 1:
        if sync_bn:
            log.info("model.sync_bn applies to multi-process runs; one process keeps plain BatchNorm")
        return embedder
    if sync_bn:  # CUDA only: the trainer refuses it on CPU before any rank gets here
        embedder = nn.SyncBatchNorm.convert_sync_batchnorm(embedder)
    return DistributedDataParallel(embedder, device_ids=[device] if device.type == "cuda" else None)


def clip_gradients(replicated: list[nn.Parameter], sharded: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scales every gradient so the global norm is at most ``max_norm``; returns the norm before.

    The same rule as ``torch.nn.utils.clip_grad_norm_``, with each rank's sharded gradients counted once.
    """
    if not sharded:
        return torch.nn.utils.clip_grad_norm_(replicated, max_norm)
    grads = [p.grad for p in replicated if p.grad is not None]
    own = [p.grad for p in sharded if p.grad is not None]
    device = (grads or own)[0].device
    squares = torch.zeros((), device=device)
    for grad in own:
        squares = squares + torch.linalg.vector_norm(grad.float()) ** 2
    squares = distributed.all_reduce(squares)
    for grad in grads:
        squares = squares + torch.linalg.vector_norm(grad.float()) ** 2
    total = squares.sqrt()
    factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for grad in grads + own:
        grad.mul_(factor.to(grad.dtype))
    return total


def grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """fp16 loss scaling; with several ranks, one that agrees on overflow across ranks.

    Each rank's head slice has gradients of its own, so one rank may overflow where another does not;
    torch's ShardedGradScaler all-reduces that decision, so every rank skips the same steps.
    """
    if enabled and distributed.world_size() > 1:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type, enabled=True)
    return torch.amp.GradScaler(device.type, enabled=enabled)


def split_params(
    optimizer: torch.optim.Optimizer, head: ShardedHead | None
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(the optimizer's parameters every rank holds alike, this rank's own slice of a sharded head)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    own = set() if head is None else {id(p) for p in head.parameters()}
    return [p for p in params if id(p) not in own], [p for p in params if id(p) in own]


def _map_row_state(
    optimizer: torch.optim.Optimizer, state: dict[str, Any], head: ShardedHead, change: Callable[..., Any]
) -> dict[str, Any]:
    """``state`` (an optimizer state dict) with ``change(value, param)`` applied to each state value of the
    head's row-sharded parameters, in the same order on every rank; ``state`` itself is not modified."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    index_of = {id(param): index for index, param in enumerate(params)}  # as state_dict() numbers them
    mapped = {**state, "state": dict(state["state"])}
    for name, param in head.head.named_parameters():
        index = index_of[id(param)]
        if name in ROW_KEYS and index in mapped["state"]:
            entry = mapped["state"][index]
            mapped["state"][index] = {key: change(entry[key], param) for key in sorted(entry)}
    return mapped


def full_optimizer_state(optimizer: torch.optim.Optimizer, head: ShardedHead) -> dict[str, Any] | None:
    """The optimizer state with each head slice's per-row state joined (main rank; None elsewhere).

    Every rank must call it (each join is a collective). The optimizer's own state is never modified.
    """

    def join(value: Any, param: nn.Parameter) -> Any:
        if isinstance(value, torch.Tensor) and value.shape == param.shape:  # per row, like the parameter
            return distributed.gather_rows_to_main(value, head.row_counts())
        return value

    state = _map_row_state(optimizer, optimizer.state_dict(), head, join)
    return state if distributed.is_main() else None


def load_sharded_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any], head: ShardedHead) -> None:
    """Loads a whole-head optimizer state (saved at any world size), keeping this rank's rows."""
    start, end = head.row_range()
    total = sum(head.row_counts())

    def cut(value: Any, param: nn.Parameter) -> Any:
        if isinstance(value, torch.Tensor) and value.shape == (total, *param.shape[1:]):
            return value[start:end]
        return value

    optimizer.load_state_dict(_map_row_state(optimizer, state, head, cut))
