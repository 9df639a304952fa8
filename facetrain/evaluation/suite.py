"""The verification suite: every insightface ``.bin`` of a folder, scored set by set and shown as one table.

Papers report LFW, CFP-FP, AgeDB-30, CALFW and CPLFW side by side, each as k-fold accuracy ± std, and
often their mean. ``read_suite`` finds and checks the files (before any model is loaded), ``run_eval``
scores them, and ``format_suite`` / ``suite_to_dict`` summarise the reports.
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any

from facetrain.errors import DataError
from facetrain.evaluation.pairs import PairList, read_pairs
from facetrain.files import os_reason, require_folder

if TYPE_CHECKING:  # the reports' module imports torch; reading the suite's files must not
    from facetrain.evaluation.evaluate import PairsReport

# The field's order; any other .bin follows, alphabetically.
KNOWN_SETS = ("lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw", "vgg2_fp")
SUITE_TAR_FAR = "1e-3"
_FIX = "give the folder that holds the verification .bin files (lfw.bin, cfp_fp.bin, agedb_30.bin, ...)"


def suite_files(directory: str | Path) -> list[Path]:
    """The ``.bin`` files directly in ``directory`` (hidden ones skipped), the known sets first in the field's
    order, then the others alphabetically.

    Raises:
        DataError: the folder is missing, is not a folder, or holds no ``.bin`` file.
    """
    folder = require_folder(directory, DataError, "--suite", _FIX)
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise DataError(f"--suite: cannot list the folder '{folder}' ({os_reason(exc)}): {_FIX}") from None
    files = [entry for entry in entries if _is_bin(entry)]
    if not files:
        raise DataError(f"--suite: folder '{folder}' holds no .bin file{_found_below(entries)}: {_FIX}")

    def order(path: Path) -> tuple[int, str, str]:
        stem = path.stem.lower()
        rank = KNOWN_SETS.index(stem) if stem in KNOWN_SETS else len(KNOWN_SETS)
        return rank, stem, path.name

    return sorted(files, key=order)


def read_suite(directory: str | Path) -> list[PairList]:
    """Every ``.bin`` of ``directory`` (see ``suite_files``), each read and checked before any embedding.

    Raises:
        DataError: the folder is unusable, or a file is not a readable pairs ``.bin``.
    """
    return [read_pairs(path, None, "bin") for path in suite_files(directory)]


def _is_bin(entry: Path) -> bool:
    # Hidden files include macOS's "._lfw.bin" resource forks, which are not pickles.
    return entry.suffix.lower() == ".bin" and not entry.name.startswith(".") and entry.is_file()


def _found_below(entries: list[Path]) -> str:
    """A hint when the .bin files are one folder down (insightface's faces_emore/ holds them with train.rec)."""
    for entry in entries:
        try:
            if entry.is_dir() and any(_is_bin(child) for child in entry.iterdir()):
                return f" (its sub-folder '{entry.name}' does: give that folder)"
        except OSError:
            continue
    return ""


def suite_mode(reports: list[PairsReport]) -> str:
    """Which embeddings the headline numbers use: ``flip-fused``, ``plain``, or ``mixed``."""
    fused = {report.flip is not None for report in reports}
    return "mixed" if len(fused) > 1 else "flip-fused" if fused == {True} else "plain"


def mean_accuracy(reports: list[PairsReport]) -> float:
    """The mean of the sets' headline accuracies (each set counts once, whatever its size)."""
    if not reports:
        raise ValueError("mean_accuracy needs at least one report")
    return fmean(report.headline.accuracy for report in reports)


def format_suite(reports: list[PairsReport]) -> str:
    """One table as papers print it: a row per set (accuracy % ± std % over its folds, TAR at FAR 1e-3,
    ROC AUC, pairs), then the mean accuracy of the sets. Headline metrics: flip fusion when computed."""
    if not reports:
        raise ValueError("format_suite needs at least one report")
    mode = suite_mode(reports)
    described = "flip-fused where computed, else plain" if mode == "mixed" else mode
    width = max(8, *(len(report.name) for report in reports))
    tar = f"TAR@FAR={SUITE_TAR_FAR} %"
    lines = [
        f"verification suite, {described} embeddings: accuracy % is the mean ± std over each set's folds",
        f"  {'set':<{width}}  {'pairs':>7}  {'accuracy %':>15}  {tar:>16}  {'ROC AUC':>8}",
    ]
    for report in reports:
        metrics = report.headline
        accuracy = f"{100 * metrics.accuracy:.2f} ± {100 * metrics.accuracy_std:.2f}"
        tar_value = metrics.tar_at_far.get(SUITE_TAR_FAR)
        tar_text = f"{100 * tar_value:.2f}" if tar_value is not None else "n/a"
        lines.append(
            f"  {report.name:<{width}}  {report.pairs:>7}  {accuracy:>15}  {tar_text:>16}  {metrics.roc_auc:>8.4f}"
        )
    mean = f"{100 * mean_accuracy(reports):.2f}"
    lines.append(f"  {'mean':<{width}}  {'':>7}  {mean:>15}")
    return "\n".join(lines)


def suite_to_dict(reports: list[PairsReport]) -> dict[str, Any]:
    """The suite summary for ``--json``: each set's headline accuracy and std (fractions, not %), its pair
    count, and the mean accuracy of the sets. Set names are the reports' (``run_eval`` makes them unique)."""
    return {
        "embeddings": suite_mode(reports),
        "sets": {
            report.name: {
                "accuracy": report.headline.accuracy,
                "accuracy_std": report.headline.accuracy_std,
                "pairs": report.pairs,
            }
            for report in reports
        },
        "mean_accuracy": mean_accuracy(reports),
    }
