"""How long a user waits for the command line's answer to a mistake, as whole processes.

Each command is a typo or a wrong path that needs no model; each is run ``--repeats`` times (in
rounds, so a noisy moment hits every command alike), beside ``python -c pass`` (the interpreter's
own start) and ``python -c "import torch"`` (what an answer costs when torch is imported first).
Prints a table of medians with each command's exit code and first line, and the peak memory of
its process, and writes the figures as JSON.

    python scripts/bench_cli.py                  # 10 rounds, writes bench_cli.json
    python scripts/bench_cli.py --repeats 3 --json /tmp/cli.json

Run it on an idle machine: on 2 busy cores every figure grows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
FACETRAIN = [sys.executable, "-m", "facetrain"]

# (label, argv). Relative paths are inside a fresh temporary folder.
COMMANDS = [
    ("python -c pass", [sys.executable, "-c", "pass"]),
    ('python -c "import torch"', [sys.executable, "-c", "import torch"]),
    ("facetrain --help", [*FACETRAIN, "--help"]),
    ("facetrain --version", [*FACETRAIN, "--version"]),
    ("facetrain train --config missing.yaml", [*FACETRAIN, "train", "--config", "missing.yaml"]),
    (
        "facetrain check --config configs/demo.yaml --set model.embeding_dim=3",
        [*FACETRAIN, "check", "--config", str(DEMO), "--set", "model.embeding_dim=3"],
    ),
    (
        "facetrain train --config configs/demo.yaml --set data.root=missing",
        [*FACETRAIN, "train", "--config", str(DEMO), "--set", "data.root=missing"],
    ),
    ("facetrain eval --checkpoint missing.pt", [*FACETRAIN, "eval", "--checkpoint", "missing.pt"]),
    (
        "facetrain eval --checkpoint model.pt --pairs bad_pairs.txt",
        [*FACETRAIN, "eval", "--checkpoint", "model.pt", "--pairs", "bad_pairs.txt"],
    ),
    ("facetrain align --input missing --out x", [*FACETRAIN, "align", "--input", "missing", "--out", "x"]),
    ("facetrain pairs --root missing --out x.txt", [*FACETRAIN, "pairs", "--root", "missing", "--out", "x.txt"]),
    ("facetrain train --epochs 3 (no such option)", [*FACETRAIN, "train", "--epochs", "3"]),
]


def timed(argv: list[str], cwd: Path) -> tuple[float, int, int, str]:
    """(seconds, exit code, peak resident memory in bytes, first line printed) of one run of ``argv``."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    lines = [line.strip(" │╭╰─") for line in output.splitlines() if line.strip(" │╭╰─")]
    first = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "")
    return seconds, process.returncode, usage.ru_maxrss * 1024, first


def prepare(folder: Path) -> None:
    """``model.pt``, laid out as a torch.save archive (a zip holding ``data.pkl``), so ``eval`` gets past
    its checkpoint check to the pairs file; and ``bad_pairs.txt``, a malformed pairs list."""
    with zipfile.ZipFile(folder / "model.pt", "w") as archive:
        archive.writestr("model/data.pkl", b"")
    (folder / "bad_pairs.txt").write_text("only-two fields\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="Runs of each command (median reported).")
    parser.add_argument("--json", type=Path, default=Path("bench_cli.json"), help="Where to write the figures.")
    args = parser.parse_args()

    runs: dict[str, list[tuple[float, int, int, str]]] = {label: [] for label, _ in COMMANDS}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(folder)
        for _ in range(args.repeats):
            for label, argv in COMMANDS:
                runs[label].append(timed(argv, folder))

    rows = []
    for label, results in runs.items():
        seconds = [result[0] for result in results]
        rows.append(
            {
                "command": label,
                "median_s": statistics.median(seconds),
                "min_s": min(seconds),
                "max_s": max(seconds),
                "exit_code": results[-1][1],
                "peak_rss_mib": max(result[2] for result in results) / 2**20,
                "says": results[-1][3],
            }
        )
    base = rows[0]["median_s"]
    print(f"{'command':<68}{'median':>8}{'- pass':>8}{'exit':>6}{'MiB':>6}")
    for row in rows:
        print(
            f"{row['command']:<68}{row['median_s']:>7.2f}s{row['median_s'] - base:>7.2f}s"
            f"{row['exit_code']:>6}{row['peak_rss_mib']:>6.0f}"
        )
        if row["says"] and row["command"].startswith("facetrain"):
            print(f"    {row['says'][:110]}")
    payload = {"repeats": args.repeats, "python": sys.version.split()[0], "cpus": os.cpu_count(), "rows": rows}
    args.json.write_text(json.dumps(payload, indent=2))
    print(f"json: {args.json}")


if __name__ == "__main__":
    main()
