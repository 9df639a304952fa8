"""Every collective facetrain uses, behind functions that are no-ops for a single process.

torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``) switch distributed
training on; without them nothing here touches ``torch.distributed``. Nothing happens at import:
``process_group`` starts the group and always tears it down.

Backends: gloo on CPU; on CUDA ``cpu:gloo,cuda:nccl``, so CUDA tensors go over NCCL while small
Python objects (error messages, random states) travel over gloo without touching GPU memory.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import socket
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from facetrain.errors import ConfigError, FacetrainError, PeerFailed

_started = False  # a process group was started in this process (errors after it are settled collectively)


def launched() -> bool:
    """True under torchrun (or anything that sets its variables), whatever the world size."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def started() -> bool:
    return _started


def rank() -> int:
    return dist.get_rank() if active() else int(os.environ.get("RANK", 0))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def device_for(device: torch.device) -> torch.device:
    """Under torchrun every rank of a node takes its own GPU, ``cuda:LOCAL_RANK``.

    Every rank checks that the node has a GPU for each of its processes, so all of them refuse alike.
    """
    if device.type != "cuda" or not launched():
        return device
    processes = max(int(os.environ.get("LOCAL_WORLD_SIZE", 0)), local_rank() + 1)
    gpus = torch.cuda.device_count()
    if processes > gpus:
        raise ConfigError(
            f"torchrun started {processes} processes on this machine, which has {gpus} GPU"
            f"{'' if gpus == 1 else 's'}: start one per GPU (--nproc-per-node {gpus}), or train on CPU "
            "(--device cpu, or train.device: cpu)"
        )
    return torch.device("cuda", local_rank())


def require_rendezvous() -> None:
    """Under torchrun's variables, the rendezvous address must be there too: a ``RANK`` left in a shell or
    a scheduler's environment is not a launch."""
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if launched() and missing:
        raise ConfigError(
            f"RANK={os.environ['RANK']} and WORLD_SIZE={os.environ['WORLD_SIZE']} are set, but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not, so torchrun did not start this process: unset RANK and "
            "WORLD_SIZE (they are left from another job), or start it with torchrun or --nproc-per-node"
        )


@contextlib.contextmanager
def process_group(device: torch.device, timeout_s: float) -> Iterator[None]:
    """Starts the process group when launched (``timeout_s`` bounds every wait for a peer); ends it on exit."""
    global _started
    if not launched() or active():
        yield
        return
    require_rendezvous()
    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    _started = True
    try:
        yield
    except FacetrainError as exc:
        if not isinstance(exc, PeerFailed):  # this rank says why it stops: the others need not
            report_failure()
        raise
    finally:
        # DistributedDataParallel sits in a reference cycle. Left for the interpreter's exit, its
        # collection after the group is gone aborts a gloo rank now and then (SIGABRT, "terminate
        # called without an active exception"), and torchrun reports the finished run as failed.
        gc.collect()
        with contextlib.suppress(Exception):  # a peer that died has broken the group: leave anyway
            dist.destroy_process_group()


def split(count: int, part: int, parts: int) -> tuple[int, int]:
    """[start, end) of part ``part`` when ``count`` items are cut into ``parts`` contiguous pieces.

    The first ``count % parts`` pieces hold one item more; every item is in exactly one piece.
    """
    base, extra = divmod(count, parts)
    start = part * base + min(part, extra)
    return start, start + base + (1 if part < extra else 0)


def piece_sizes(count: int, parts: int) -> list[int]:
    """The length of every piece of ``split(count, part, parts)``, in order."""
    return [end - start for start, end in (split(count, part, parts) for part in range(parts))]


def broadcast_buffers(module: torch.nn.Module) -> None:
    """The main rank's buffers (BatchNorm running statistics) on every rank."""
    if active():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In place, without gradient: the sum (or max) over every rank."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's (equal-sized) tensor, concatenated along dim 0 in rank order; no gradient."""
    if not active():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_gather_objects(value: Any) -> list[Any]:
    if not active():
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def node_peers() -> tuple[int, int, int, int]:
    """(this rank's place among the ranks on its machine, how many they are, the first of them, and how many
    ranks the most crowded machine has); a collective.

    Machines are told apart by host name and torchrun's ``GROUP_RANK``, not by ``LOCAL_RANK``, which
    a hand-made launch may leave unset.
    """
    key = (socket.gethostname(), os.environ.get("GROUP_RANK", "0"))
    keys = all_gather_objects(key)
    mates = [peer for peer, other in enumerate(keys) if other == key]
    return mates.index(rank()), len(mates), mates[0], max(keys.count(other) for other in keys)


def broadcast_object(value: Any) -> Any:
    """The main rank's ``value``, on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the summed gradient of its own rows, times ``scale``."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.rows, ctx.scale = tensor.shape[0], scale
        return all_gather(tensor)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = all_reduce(grad.contiguous().clone())  # gloo has no reduce_scatter
        start = rank() * ctx.rows
        return grad[start : start + ctx.rows] * ctx.scale, None


def gather_with_grad(tensor: torch.Tensor, grad_scale: float = 1.0) -> torch.Tensor:
    """Every rank's rows (equal counts), with a gradient path back to each rank's own rows.

    ``grad_scale``: DistributedDataParallel averages the embedder's gradients over ranks, so a loss
    that is already the mean over the global batch passes ``world_size()`` here to undo that.
    """
    return _GatherWithGrad.apply(tensor, grad_scale) if active() else tensor


class _SumAcross(torch.autograd.Function):
    """all_reduce(sum) whose backward passes the gradient through unchanged.

    Every rank computes the same loss from the summed value, so the gradient of that loss with
    respect to one rank's own summand is the gradient with respect to the sum, already on that rank.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce(tensor.clone())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


def sum_across(tensor: torch.Tensor) -> torch.Tensor:
    return _SumAcross.apply(tensor) if active() else tensor


def gather_rows_to_main(tensor: torch.Tensor, counts: list[int]) -> torch.Tensor | None:
    """Each rank's rows (rank r holds ``counts[r]``) joined in rank order on the main rank, on the CPU.

    Point to point, one rank at a time, so the main rank never holds more than its own rows and
    one peer's on the device. Returns None on the other ranks.
    """
    if not active():
        return tensor.detach().cpu()
    if not is_main():
        if tensor.shape[0]:
            dist.send(tensor.detach().contiguous(), dst=0)
        return None
    pieces = [tensor.detach().cpu()]
    for peer in range(1, world_size()):
        if not counts[peer]:
            continue
        buffer = torch.empty((counts[peer], *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        dist.recv(buffer, src=peer)
        pieces.append(buffer.cpu())
    return torch.cat(pieces)


def settle(error: BaseException | None) -> None:
    """After a phase that every rank runs (setup): if any rank failed, every rank stops.

    The main rank raises its own error, or the first failing rank's message; the other ranks raise
    ``PeerFailed``, which exits with code 2 and prints nothing, so the user reads the message once.
    An error that is not a ``FacetrainError`` (a bug) is raised again on its own rank, traceback and
    all. Call it on every rank, with the error this rank caught or None.
    """
    if not active():
        if error is not None:
            raise error
        return
    reports = all_gather_objects(None if error is None else (type(error).__name__, str(error)))
    failed = [(peer, report) for peer, report in enumerate(reports) if report is not None]
    if not failed:
        return
    if error is not None and (is_main() or not isinstance(error, FacetrainError)):
        raise error
    if not is_main():
        raise PeerFailed(f"rank {failed[0][0]} failed") from error
    peer, (kind, message) = failed[0]
    raise _error_class(kind)(f"rank {peer}: {message}")


_FAILED_KEY = "facetrain/failed"  # in the run's rendezvous store: the rank that stopped and said why


def report_failure() -> None:
    """Records in the rendezvous store that this rank stops on an error it reports itself, so a peer
    that then loses contact with it exits quietly (``peer_reported``) instead of adding a second message."""
    store = _store()
    if store is not None:
        with contextlib.suppress(Exception):  # best effort: without it, the peer says it lost contact
            store.set(_FAILED_KEY, str(rank()))


def peer_reported(wait_s: float = 2.0) -> bool:
    """Whether another rank has stopped on an error it reported (``report_failure``), waiting up to ``wait_s``
    for the record: the peer writes it just before it leaves, so the news of its leaving can come first."""
    store = _store()
    if store is None:
        return False
    try:
        store.wait([_FAILED_KEY], datetime.timedelta(seconds=wait_s))
        return int(store.get(_FAILED_KEY)) != rank()
    except Exception:  # not recorded in time, or the store left with the rank that held it
        return False


def _store() -> Any:
    """The process group's key-value store (torchrun's agent holds it, so it outlives a failed rank), or None."""
    if not active():
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:
        return None


_PEER_SIGNS = ("gloo", "nccl", "connection reset", "connection closed", "broken pipe", "timed out waiting")


def lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another rank died, hung or vanished."""
    if not active() or world_size() == 1:
        return False
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(sign in text for sign in _PEER_SIGNS)


def _error_class(name: str) -> type[FacetrainError]:
    from facetrain import errors

    found = getattr(errors, name, None)
    return found if isinstance(found, type) and issubclass(found, FacetrainError) else FacetrainError
