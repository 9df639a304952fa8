"""``facetrain train --nproc-per-node N``: the same workers torchrun would start, through torch's own launcher.

It is ``torchrun --standalone --nproc-per-node N -m facetrain train ...`` without having to type it:
torch's elastic agent (``torch.distributed.launcher.api.elastic_launch``) starts the processes,
picks a free port (rendezvous at localhost:0) and stops every worker when one fails. Nothing of
the launch itself is facetrain's own.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from pathlib import Path

import typer

from facetrain.errors import ConfigError


def process_count(value: str) -> int:
    """``auto``: one process per visible GPU, else 1; or a whole number >= 1."""
    if value == "auto":
        import torch

        return max(torch.cuda.device_count(), 1)
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1 or count > 1024:
        raise ConfigError(f"--nproc-per-node: expected a number of processes (1-1024) or auto, got {value!r}")
    return count


def without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` with ``option VALUE`` and ``option=VALUE`` removed."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


def launch(count: int, argv: list[str], last: str | Path | None = None) -> int:
    """Runs ``python -m facetrain ARGV`` as ``count`` workers of one machine; returns the exit code.

    A worker that fails has printed its own message; the agent's report of it is not repeated.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # torchrun sets 1 and warns; share the cores out instead, unless the user chose.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // count)))
    for name in list(logging.root.manager.loggerDict):  # the agent's own notices: the workers say what matters
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=count,
        run_id=f"facetrain-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, as torchrun --standalone
        max_restarts=0,
        monitor_interval=0.5,
    )
    os.environ["FACETRAIN_LAUNCHED"] = "1"  # the workers' own --nproc-per-node was handled here
    try:
        elastic_launch(config, sys.executable)("-m", "facetrain", *argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode < 0:  # killed by a signal: the worker could not say so itself
            typer.echo(killed_message(rank, -failure.exitcode, last), err=True)
        return failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # -9: killed by SIGKILL
    except SignalException as exc:
        return 128 + int(exc.sigval)
    return 0


def killed_message(rank: int, signal_number: int, last: str | Path | None) -> str:
    """What the launcher says when a worker died of a signal: which rank, which signal, how to go on."""
    try:
        name = signal.Signals(signal_number).name
    except ValueError:
        name = f"signal {signal_number}"
    resume = f"--resume {last}" if last is not None else "--resume RUN_DIR/last.pt"
    return (
        f"rank {rank} was killed ({name}), and the launcher stopped the others: checkpoints are written "
        f"atomically, so the last one is intact; continue with facetrain train {resume} --nproc-per-node N"
    )


def check_cores(count: int, device: str, cores: int | None = None) -> None:
    """On CPU, refuses more processes than the cores this process may use (naming both numbers): each
    rank would only wait for the others. torchrun itself still starts any number, for who means it."""
    on_cpu = device == "cpu" or (device == "auto" and not _cuda_present())
    cores = cores if cores is not None else usable_cores()
    if on_cpu and count > cores:
        raise ConfigError(
            f"--nproc-per-node {count} is more processes than the {cores} CPU core{'s' if cores != 1 else ''} this "
            f"run may use, and CPU ranks would only wait for each other: use --nproc-per-node {cores} or fewer "
            f"(torchrun --standalone --nproc-per-node {count} starts them anyway, to test a larger world)"
        )


def _cuda_present() -> bool:
    import torch  # only when the device is auto: train.device cpu is answered without it

    return torch.cuda.is_available()


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, as a container or taskset limits it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def launch_if_asked(nproc_per_node: str, last: str | Path | None = None, device: str = "auto") -> None:
    """Starts the workers and exits with their code, unless this is one of them or 1 process is asked for."""
    if "RANK" in os.environ:  # a worker (or a rank under torchrun): run the command itself
        from facetrain.distributed import require_rendezvous

        require_rendezvous()  # not a RANK left over from another job
        if "FACETRAIN_LAUNCHED" not in os.environ and os.environ.get("RANK") == "0" and nproc_per_node != "1":
            logging.getLogger("facetrain").warning(
                "--nproc-per-node %s is ignored: torchrun started these %s processes already",
                nproc_per_node, os.environ.get("WORLD_SIZE", "?"),
            )  # fmt: skip
        return
    count = process_count(nproc_per_node)
    if count == 1:
        return
    check_cores(count, device)
    if sys.argv[1:2] != ["train"]:  # the workers re-run this command line: it must be this one
        raise ConfigError("--nproc-per-node works from the command line: use torchrun in a script")
    raise typer.Exit(launch(count, without_option(sys.argv[1:], "--nproc-per-node"), last))
