"""``scripts/bench_cli.py`` runs every command it times and writes its JSON (times are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_bench_cli_runs_each_command_and_sees_its_error(tmp_path):
    out = tmp_path / "cli.json"
    result = subprocess.run(
        [sys.executable, "scripts/bench_cli.py", "--repeats", "1", "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {row["command"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["python -c pass"]["exit_code"] == 0 and rows["facetrain --version"]["exit_code"] == 0
    answers = ("facetrain --help", "facetrain --version")
    mistakes = [row for name, row in rows.items() if name.startswith("facetrain") and name not in answers]
    assert len(mistakes) >= 8 and all(row["exit_code"] == 2 for row in mistakes), mistakes
    said = {row["command"]: row["says"] for row in mistakes}
    assert "config file 'missing.yaml' not found" in said["facetrain train --config missing.yaml"]
    assert "bad_pairs.txt:1" in said["facetrain eval --checkpoint model.pt --pairs bad_pairs.txt"]
    assert all(row["median_s"] > 0 and row["peak_rss_mib"] > 0 for row in rows.values())
