"""Gathers a device_check.sh folder into summary.json and a Markdown table (table.md).

Usage: python scripts/device_summary.py OUTDIR
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def bench_rows(out: Path) -> list[dict]:
    rows = []
    for path in sorted(out.glob("bench_*.json")) + sorted(out.glob("pipeline_*.json")):
        result = read_json(path)
        if result is None:
            continue
        row = {
            "name": path.stem,
            "backbone": result["backbone"],
            "amp": result["amp"],
            "channels_last": result["channels_last"],
            "compile": result["compile"] and not result.get("compile_fell_back"),
            "facetrain_img_s": result["facetrain"]["images_per_sec"],
            "facetrain_peak_mb": result["facetrain"]["peak_memory_mb"],
        }
        if "reference" in result:
            row["reference_img_s"] = result["reference"]["images_per_sec"]
            row["reference_peak_mb"] = result["reference"]["peak_memory_mb"]
            row["ratio"] = result["ratio_vs_reference"]
        for key in ("pipeline_rec", "pipeline_folder"):
            if key in result:
                row[f"{key}_img_s"] = result[key]["images_per_sec"]
                row[f"{key}_vs_synthetic"] = result[f"{key}_vs_synthetic"]
        rows.append(row)
    return rows


def pytest_counts(out: Path) -> dict | None:
    try:
        root = ElementTree.parse(out / "pytest_gpu.xml").getroot()
    except (OSError, ElementTree.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    return {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}


def table(rows: list[dict]) -> str:
    lines = [
        "| backbone | amp | channels_last | compile | facetrain img/s | reference img/s | ratio | peak MB (ft / ref) |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "reference_img_s" not in row:
            continue
        lines.append(
            f"| {row['backbone']} | {row['amp']} | {row['channels_last']} | {row['compile']} | "
            f"{row['facetrain_img_s']:,.0f} | {row['reference_img_s']:,.0f} | {row['ratio']:.2f} | "
            f"{row['facetrain_peak_mb']:,.0f} / {row['reference_peak_mb']:,.0f} |"
        )
    for row in rows:
        if "pipeline_rec_img_s" in row:
            lines.append(
                f"\n.rec pipeline, {row['backbone']} {row['amp']}: {row['pipeline_rec_img_s']:,.0f} img/s, "
                f"{row['pipeline_rec_vs_synthetic']:.2f} of the synthetic {row['facetrain_img_s']:,.0f} img/s"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    out = Path(sys.argv[1])
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()]
    rows = bench_rows(out)
    summary = {
        "environment": read_json(out / "environment.json"),
        "steps": steps,
        "failed_steps": [s["step"] for s in steps if s.get("rc", 0) != 0],
        "skipped_steps": [s["step"] for s in steps if "skipped" in s],
        "pytest_gpu": pytest_counts(out),
        "bench": rows,
        "demo_eval": read_json(out / "demo_eval.json"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "table.md").write_text(table(rows))
    print(table(rows))
    print("failed steps:", summary["failed_steps"] or "none", "| skipped:", summary["skipped_steps"] or "none")


if __name__ == "__main__":
    main()
