"""IJB results for people: the tables papers print, a JSON file and a ROC plot."""

from __future__ import annotations

from pathlib import Path

from facetrain.evaluation.ijb.run import HEADLINE_FAR, Identification, Verification
from facetrain.evaluation.report import json_text
from facetrain.files import atomic_write, write_text


def _percent(value: float | None, missing: str) -> str:
    return f"{100 * value:.2f}" if value is not None else missing


def format_ijb(report: Verification | Identification) -> str:
    if isinstance(report, Verification):
        return format_verification(report)
    return format_identification(report)


def format_verification(report: Verification) -> str:
    keys = list(report.tar_at_far)
    missing = "n/a"
    lines = [
        f"{report.target} 1:1 verification, {report.model}: {report.images} images, {report.templates} templates, "
        f"{report.pairs} pairs ({report.genuine} genuine / {report.impostor} impostor)",
        f"  mode: {report.mode}",
        f"  {'TAR (%) @ FAR':<26}" + "".join(f"{key:>9}" for key in keys),
        f"  {'strict (FAR <= target)':<26}" + "".join(f"{_percent(report.tar_at_far[k], missing):>9}" for k in keys),
        f"  {'insightface (nearest FAR)':<26}"
        + "".join(f"{_percent(report.tar_at_far_insightface[k], missing):>9}" for k in keys),
        f"  ROC AUC {100 * report.roc_auc:.2f} %",
    ]
    for key, threshold in report.threshold.items():
        lines.append(f"  TAR@FAR={key}: {100 * report.tar_at_far[key]:.2f} % (strict) at threshold {threshold:.4f}")
    unmeasurable = [k for k in keys if report.tar_at_far[k] is None]
    if unmeasurable:
        lines.append(f"  n/a: only {report.impostor} impostor pairs, too few to measure FAR {', '.join(unmeasurable)}")
    return "\n".join(lines)


def format_identification(report: Identification) -> str:
    galleries = [name for name in report.tpir_at_fpir if name != "mean"]
    sizes = ", ".join(f"{name} {count}" for name, count in report.gallery_templates.items())
    lines = [
        f"{report.target} 1:N identification, {report.model}: {report.probes} probe templates; "
        f"gallery templates {sizes}",
        f"  mode: {report.mode}",
        f"  closed set ({' ∪ '.join(galleries)}): " + ", ".join(f"{k} {100 * v:.2f} %" for k, v in report.cmc.items()),
    ]
    if report.probes_without_mate:
        lines.append(f"  ({report.probes_without_mate} probes have no mate in the galleries: counted as misses)")
    keys = list(report.tpir_at_fpir_insightface)
    lines.append(f"  {'TPIR (%) @ FPIR':<34}" + "".join(f"{key:>9}" for key in keys))
    for name in [*galleries, "mean"]:
        label = f"open set, {name}" if name != "mean" else f"open set, mean of {' and '.join(galleries)}"
        lines.append(f"  {label:<34}" + "".join(f"{_percent(report.tpir_at_fpir[name][k], 'n/a'):>9}" for k in keys))
    lines.append(
        f"  {'insightface (pooled non-mates)':<34}"
        + "".join(f"{_percent(report.tpir_at_fpir_insightface[k], 'n/a'):>9}" for k in keys)
    )
    return "\n".join(lines)


def write_ijb_json(report: Verification | Identification, path: str | Path, source: str) -> Path:
    payload = {"model": source, "ijb": report.to_dict()}
    return write_text(path, json_text(payload), "--json")


def write_ijb_plot(report: Verification, path: str | Path) -> Path:
    """The ROC on a log-FAR axis and the score histograms, marked at the headline threshold."""
    from facetrain.evaluation.plots import save_verification_plot

    target = Path(path)
    headline = report.tar_at_far[HEADLINE_FAR]
    title = f"{report.target} 1:1: TAR@FAR={HEADLINE_FAR} " + (
        f"{100 * headline:.2f} %" if headline is not None else "n/a"
    )
    far, threshold = next(iter(report.threshold.items()), ("", 0.0))
    if far and far != HEADLINE_FAR:
        title += f"; marked: the threshold for FAR <= {far}"
    with atomic_write(target, "--plot") as temp:
        save_verification_plot(temp, report.scores, report.is_same, threshold, title)
    return target
