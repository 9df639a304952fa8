"""The classifier's step time and peak memory per rank: replicated vs sharded, Partial FC sampling, 1-3 ranks.

Each configuration runs in fresh processes (gloo on CPU), so each peak is its own. One step is the
head alone: random embeddings of each rank's batch -> loss -> backward -> SGD (momentum, weight
decay), as in training. The modes:

- replicated: every rank holds the whole head and computes its own batch's loss; the head's
  gradients are then averaged across ranks (what DistributedDataParallel would do).
- sharded: rank r holds classes split(C, r, W) (facetrain's ShardedHead), every class scored.
- partial_fc: sharded, and each step scores only ``--sample-rate`` of each slice (positives kept).

Peak memory per rank is the process's peak resident memory minus its resident memory just before
the head was built (ru_maxrss), the largest over the ranks. Step time is the median of the timed
steps, on the main rank, after the warm-up steps.

Usage:
  python scripts/bench_partial_fc.py                      # docs/performance.md's table (C = 10k, 100k, 1M; 1-3 ranks)
  python scripts/bench_partial_fc.py --classes 10000 --ranks 2 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

MODES = ("replicated", "sharded", "partial_fc")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, job: dict, out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    from facetrain import distributed
    from facetrain.config import HeadConfig
    from facetrain.models import ShardedHead, build_head

    with distributed.process_group(torch.device("cpu"), 600):
        warm = torch.randn(64, 64, requires_grad=True)  # torch's own lazy set-up is not the head's memory
        (warm @ warm).logsumexp(1).sum().backward()
        before = _rss_bytes()
        torch.manual_seed(0)
        rate = job["sample_rate"] if job["mode"] == "partial_fc" else 1.0
        cfg = HeadConfig(type="arcface", s=64.0, m=0.5, sample_rate=rate)
        if job["mode"] == "replicated":
            head = build_head(cfg, job["dim"], job["classes"])
        else:
            head = ShardedHead(cfg, job["dim"], job["classes"], seed=0)
        head.train()
        optimizer = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        generator = torch.Generator().manual_seed(1 + rank)
        times = []
        for step in range(job["warmup"] + job["steps"]):
            embeddings = torch.randn(job["batch"], job["dim"], generator=generator, requires_grad=True)
            labels = torch.randint(0, job["classes"], (job["batch"],), generator=generator)
            distributed.barrier()
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            if job["mode"] == "replicated":
                logits, _ = head(embeddings, labels)
                F.cross_entropy(logits, labels).backward()
                for param in head.parameters():  # DDP's averaging of the replicated head's gradients
                    distributed.all_reduce(param.grad).div_(world)
            else:
                loss, _, _ = head(embeddings, labels, key=step)
                loss.backward()
            optimizer.step()
            distributed.barrier()
            if step >= job["warmup"]:
                times.append(time.perf_counter() - start)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        peaks = distributed.all_gather_objects(peak)
        if distributed.is_main():
            Path(out).write_text(json.dumps({"step_s": statistics.median(times), "peak_bytes": max(peaks)}))


def run(job: dict) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "result.json")
        torch.multiprocessing.spawn(
            _worker, args=(job["ranks"], _free_port(), job, out), nprocs=job["ranks"], join=True
        )
        return {**job, **json.loads(Path(out).read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--sample-rate", type=float, default=0.1, help="for partial_fc")
    parser.add_argument("--embedding-dim", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64, help="per rank")
    parser.add_argument("--steps", type=int, default=4, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--json", default="bench_partial_fc.json", help="where to write the results")
    args = parser.parse_args()

    rows = []
    print(f"{'classes':>9} {'ranks':>5} {'mode':>11} {'rate':>5} {'step ms':>9} {'peak MiB/rank':>14}")
    for classes in args.classes:
        for ranks in args.ranks:
            for mode in args.modes:
                job = {
                    "classes": classes, "ranks": ranks, "mode": mode, "dim": args.embedding_dim,
                    "batch": args.batch_size, "steps": args.steps, "warmup": args.warmup,
                    "sample_rate": args.sample_rate if mode == "partial_fc" else 1.0,
                }  # fmt: skip
                row = run(job)
                rows.append(row)
                print(
                    f"{classes:>9} {ranks:>5} {mode:>11} {row['sample_rate']:>5g} {row['step_s'] * 1000:>9.1f} "
                    f"{row['peak_bytes'] / 2**20:>14.0f}",
                    flush=True,
                )
    result = {
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "embedding_dim": args.embedding_dim,
        "batch_per_rank": args.batch_size,
        "rows": rows,
    }
    with open(args.json, "w") as stream:
        json.dump(result, stream, indent=2)
    print(f"saved {args.json}")


if __name__ == "__main__":
    main()
