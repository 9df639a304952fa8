"""Verification reports for people: a terminal table, a JSON file, and PNG plots."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from facetrain.evaluation.evaluate import FAR_TARGETS, Metrics, PairsReport
from facetrain.files import atomic_write, write_text


def format_report(report: PairsReport) -> str:
    """A readable table: one column per embedding variant (flip-fused, plain)."""
    columns: list[tuple[str, Metrics]] = [("no flip", report.plain)]
    if report.flip is not None:
        columns.insert(0, ("flip fusion", report.flip))
    lines = [
        f"{report.name}: {report.pairs} pairs ({report.same} same / {report.different} different), "
        f"{report.unique_images} unique images, {report.format} format, {report.fold_rule}",
        f"  {'':<18}" + "".join(f"{title:>26}" for title, _ in columns),
    ]

    def row(label: str, cell: Callable[[Metrics], str]) -> None:
        lines.append(f"  {label:<18}" + "".join(f"{cell(metrics):>26}" for _, metrics in columns))

    row("accuracy", lambda m: f"{m.accuracy:.4f} ± {m.accuracy_std:.4f}")
    row("threshold (mean)", lambda m: f"{m.threshold:.4f}")
    row("ROC AUC", lambda m: f"{m.roc_auc:.4f}")
    row("EER", lambda m: f"{m.eer:.4f}")
    for key in FAR_TARGETS:
        row(f"TAR@FAR={key}", lambda m, key=key: _tar(m.tar_at_far[key], report.different))
    return "\n".join(lines)


def _tar(value: float | None, negatives: int) -> str:
    return f"{value:.4f}" if value is not None else f"n/a (only {negatives} negatives)"


def write_json(reports: list[PairsReport], path: str | Path, checkpoint: str | Path, suite: dict | None = None) -> Path:
    """Every number of every set; ``suite``: the suite's summary (``suite_to_dict``), when scored as one."""
    payload: dict = {"checkpoint": str(checkpoint), "sets": [report.to_dict() for report in reports]}
    if suite is not None:
        payload["suite"] = suite
    return write_text(path, json_text(payload), "--json")


def json_text(payload: Any) -> str:
    """Strict JSON (no NaN, which most readers refuse): a value that is not finite is written as null."""

    def finite(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(item) for item in value]
        return value

    return json.dumps(finite(payload), indent=2, allow_nan=False) + "\n"


def write_plots(reports: list[PairsReport], path: str | Path) -> list[Path]:
    """One PNG per set: ``path`` itself for one set, ``<stem>_<name>.png`` beside it for several."""
    from facetrain.evaluation.plots import save_verification_plot

    target = Path(path)
    written = []
    for report in reports:
        out = target if len(reports) == 1 else target.with_name(f"{target.stem}_{report.name}{target.suffix}")
        title = f"{report.name}: accuracy {report.headline.accuracy:.4f}, ROC AUC {report.headline.roc_auc:.4f}"
        with atomic_write(out, "--plot") as temp:
            save_verification_plot(temp, report.scores, report.is_same, report.headline.threshold, title)
        written.append(out)
    return written
