"""``data.cache``: images decoded, cropped and resized once, kept in memory as uint8.

``CachePlan`` decides which image sets are kept, in the order asked, against one memory budget,
the same way on every rank. ``decode_into`` fills a cache with the loader's workers behind a
progress bar. ``shared_pixels`` allocates the training cache once per machine, in shared memory
(``/dev/shm``) that the DataLoader's forked workers and every rank of the machine map, so no
process holds a copy of its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from facetrain import distributed
from facetrain.config import DataConfig
from facetrain.data.images import BadImage
from facetrain.data.loaders import quiet_worker
from facetrain.errors import DataError

log = logging.getLogger("facetrain")

GB = 1e9
SHARED_DIR = Path("/dev/shm")
CACHE_PREFIX = "facetrain-cache-"  # then the creator's process id, a random token and its first rank
SHARED_HEADROOM = 256 * 2**20  # /dev/shm left to DataLoader workers' batches
_BUILD_BATCH = 32  # images per batch a worker hands back while a cache is built


class Decodable(Protocol):
    def __len__(self) -> int: ...

    def decode(self, index: int) -> torch.Tensor: ...


def image_bytes(count: int, image_size: int) -> int:
    return count * 3 * image_size * image_size


def available_memory() -> int:
    """Bytes a new allocation can have without swapping (``MemAvailable``), or less in a container whose
    memory limit (cgroup v2 or v1) leaves less: /dev/shm pages count against that limit too."""
    available = _host_available()
    left = _cgroup_left()
    return available if left is None else min(available, left)


def _host_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _cgroup_left() -> int | None:
    """Bytes left under this process's cgroup memory limit, or None without one."""
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
    ):
        try:
            cap = Path(limit).read_text().strip()
            used = int(Path(usage).read_text().strip())
        except (OSError, ValueError):
            continue
        if cap.isdigit() and int(cap) < 1 << 60:  # v1 says "no limit" with a number near 2^63
            return max(int(cap) - used, 0)
    return None


def shared_space() -> int | None:
    """Free bytes in ``/dev/shm``, or None where there is none (not Linux)."""
    try:
        stats = os.statvfs(SHARED_DIR)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


@dataclass
class CachePlan:
    """Which image sets are cached: decided in the order ``take`` is called, against one budget."""

    mode: str
    budget: int  # bytes cache: auto may use, per machine
    available: int  # bytes of memory available when the run started
    shared_free: int | None  # free bytes in /dev/shm
    used: int = 0

    @classmethod
    def create(cls, cfg: DataConfig) -> CachePlan:
        """The plan of this run (a collective): every rank's memory is asked, and the least decides."""
        facts = distributed.all_gather_objects((available_memory(), shared_space()))
        available = min(memory for memory, _ in facts)  # every rank decides alike, for the tightest machine
        shared = [free for _, free in facts]
        shared_free = None if None in shared else min(shared)  # type: ignore[type-var]
        budget = int(cfg.cache_max_gb * GB) if cfg.cache_max_gb is not None else available // 2
        return cls(cfg.cache, budget, available, shared_free)

    def can_share(self, count: int, image_size: int) -> bool:
        """Whether one copy fits in /dev/shm, leaving room for the DataLoaders' own traffic through it."""
        need = image_bytes(count, image_size) * 1.1 + SHARED_HEADROOM
        return self.shared_free is not None and need <= self.shared_free

    def take(self, what: str, count: int, image_size: int, copies: int = 1) -> bool:
        """Whether to cache ``count`` images of ``what``; logs the decision and its reason."""
        if self.mode == "none" or count == 0:
            return False
        need = image_bytes(count, image_size) * copies
        size = f"{count:,} images at {image_size} px: {_gb(need)}" + (f" in {copies} copies" if copies > 1 else "")
        if self.mode == "ram":
            if self.used + need > self.available:
                raise DataError(
                    f"data.cache: ram: the {what} ({size}) do not fit in the {_gb(self.available - self.used)} of "
                    "memory available: set data.cache: auto (caches what fits) or data.cache: none"
                )
            log.info("data.cache: ram: caching the %s (%s)", what, size)
        elif self.used + need > min(self.budget, self.available):
            limit = (
                f"the {_gb(self.budget)} budget (data.cache_max_gb)" if self.budget <= self.available
                else f"the {_gb(self.available)} of memory available (under data.cache_max_gb={self.budget / GB:g})"
            )  # fmt: skip
            left = min(self.budget, self.available) - self.used
            log.info("data.cache: auto: not caching the %s (%s), more than the %s left of %s: they are decoded "
                     "every time they are read", what, size, _gb(max(left, 0)), limit)  # fmt: skip
            return False
        else:
            log.info("data.cache: auto: caching the %s (%s) within the %s budget (data.cache_max_gb)",
                     what, size, _gb(self.budget))  # fmt: skip
        self.used += need
        return True


def _gb(count: int) -> str:
    if count < GB:
        return f"{count / 1e6:.1f} MB"
    return f"{count / GB:.1f} GB"


def private_pixels(count: int, image_size: int) -> torch.Tensor:
    return torch.empty((count, 3, image_size, image_size), dtype=torch.uint8)


def shared_pixels(count: int, image_size: int, place: int, first: int) -> torch.Tensor:
    """One (count, 3, S, S) uint8 tensor per machine, mapped by every rank on it (a collective).

    ``place``: this rank's place among its machine's ranks; ``first``: their first rank (``node_peers``).
    The machine's first rank creates a file in /dev/shm and reserves its memory (so a full /dev/shm
    is an error here, never a SIGBUS later); every rank of the machine maps it; then its name is
    removed (on failure too), and the memory goes when the last process holding it ends.
    """
    token = distributed.broadcast_object(secrets.token_hex(8) if distributed.is_main() else None)
    creator_pid = distributed.all_gather_objects(os.getpid())[first]
    path = SHARED_DIR / f"{CACHE_PREFIX}{creator_pid}-{token}-{first}"
    size = image_bytes(count, image_size)
    creator = place == 0
    try:
        error = None
        if creator:
            sweep_stale_caches()
            try:
                _reserve(path, size)
            except DataError as exc:
                error = exc
        distributed.settle(error)
        error = None
        try:
            storage = torch.from_file(str(path), shared=True, size=size, dtype=torch.uint8)
        except RuntimeError as exc:
            error = DataError(f"data.cache: cannot map the shared cache '{path}': {exc}: set data.cache: none")
        distributed.settle(error)  # every rank of the machine has it mapped: the name can go
    finally:
        if creator:
            with contextlib.suppress(OSError):
                path.unlink()
    return storage.view(count, 3, image_size, image_size)


def sweep_stale_caches(folder: Path = SHARED_DIR) -> int:
    """Removes shared caches whose creator is gone (killed in the moment the name exists); returns how many.

    The name holds its creator's process id; a file of this user whose process no longer exists is stale.
    """
    pattern = re.compile(re.escape(CACHE_PREFIX) + r"(\d+)-[0-9a-f]+-\d+")
    removed = 0
    try:
        entries = list(folder.iterdir()) if folder.is_dir() else []
    except OSError:
        return 0
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            if entry.stat().st_uid == os.getuid():
                entry.unlink()
                removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _reserve(path: Path, size: int) -> None:
    fix = "give the container more shared memory (docker run --shm-size, or --ipc=host), or set data.cache: none"
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise DataError(f"data.cache: cannot create '{path}' ({exc.strerror}): {fix}") from None
    try:
        os.posix_fallocate(descriptor, 0, max(size, 1))
    except OSError as exc:
        raise DataError(f"data.cache: cannot reserve {_gb(size)} in {SHARED_DIR} ({exc.strerror}): {fix}") from None
    finally:
        os.close(descriptor)


class _Decoded(Dataset):
    """(index, uint8 pixels, why it is bad or "") of images ``indices`` of ``source``."""

    def __init__(self, source: Decodable, indices: Sequence[int]) -> None:
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | None, str]:
        index = self.indices[position]
        try:
            return index, self.source.decode(index), ""
        except BadImage as exc:
            return index, None, str(exc)


def _gather(items: list[tuple[int, torch.Tensor | None, str]]) -> Any:
    good = [(index, pixels) for index, pixels, _ in items if pixels is not None]
    bad = [(index, reason) for index, _, reason in items if reason]
    if not good:
        return torch.empty(0, dtype=torch.int64), None, bad
    return torch.tensor([index for index, _ in good]), torch.stack([pixels for _, pixels in good]), bad


def decode_into(
    pixels: torch.Tensor,
    source: Decodable,
    indices: Sequence[int],
    offset: int = 0,
    workers: int = 0,
    desc: str = "caching",
    progress: bool = True,
) -> list[tuple[int, str]]:
    """Decodes images ``indices`` of ``source`` into ``pixels[index - offset]``, with ``workers`` processes.

    Returns (index, reason) for every image that cannot be read or decoded; its rows are left as they were.
    """
    loader = DataLoader(
        _Decoded(source, indices),
        batch_size=_BUILD_BATCH,
        num_workers=min(workers, max(1, len(indices) // _BUILD_BATCH)),
        collate_fn=_gather,
        generator=torch.Generator().manual_seed(0),  # the global RNG stays untouched (bit-identical runs)
        worker_init_fn=quiet_worker,
    )
    bad: list[tuple[int, str]] = []
    with tqdm(total=len(indices), desc=desc, unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for where, batch, failed in loader:
            if batch is not None:
                pixels[where - offset] = batch
            bad.extend(failed)
            bar.update(len(where) + len(failed))
    return bad
