"""Verification plots: ROC curve and score histograms of genuine and impostor pairs.

matplotlib is imported inside the functions so that importing this module (and the CLI) stays
cheap and works where matplotlib is not installed. Figures are drawn with the Agg canvas directly,
never through pyplot, so no global backend or figure state is touched.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from facetrain.evaluation.metrics import roc_curve

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGURE_SIZE = (11.0, 4.5)
HISTOGRAM_BINS = 40
DPI = 100
PLOTTED_POINTS = 20_000  # ROC points drawn at most, log-spaced along the curve


def _as_pairs(scores: torch.Tensor, is_same: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat float64 scores and bool flags on the CPU, checked to be the same length."""
    scores = scores.detach().cpu().double().flatten()
    is_same = is_same.detach().cpu().bool().flatten()
    if len(scores) != len(is_same):
        raise ValueError(f"scores has {len(scores)} entries but is_same has {len(is_same)}")
    return scores, is_same


def operating_point(scores: torch.Tensor, is_same: torch.Tensor, threshold: float) -> tuple[float, float]:
    """False-accept and true-accept rate when every pair with score >= ``threshold`` is accepted.

    Args:
        scores: (P,) similarity of each pair.
        is_same: (P,) True for genuine (same-identity) pairs.
        threshold: the decision threshold.
    Returns:
        (far, tar); a rate is NaN when its class has no pairs.
    """
    scores, is_same = _as_pairs(scores, is_same)
    accepted = scores >= threshold
    positives = int(is_same.sum())
    negatives = len(is_same) - positives
    far = int((accepted & ~is_same).sum()) / negatives if negatives else math.nan
    tar = int((accepted & is_same).sum()) / positives if positives else math.nan
    return far, tar


def _draw_message(axes: Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, wrap=True)


def _draw_roc(axes: Axes, scores: torch.Tensor, is_same: torch.Tensor, threshold: float) -> None:
    axes.set_xlabel("false accept rate (FAR)")
    axes.set_ylabel("true accept rate (TAR)")
    axes.set_title("ROC")
    positives = int(is_same.sum())
    negatives = len(is_same) - positives
    if positives == 0 or negatives == 0:
        # A ROC needs both classes; roc_curve would silently divide by 1 instead.
        _draw_message(axes, "ROC needs both genuine and impostor pairs")
        return
    far, tar, _ = roc_curve(scores, is_same)
    if len(far) > PLOTTED_POINTS:  # millions of points (IJB-C's 15.7M pairs) draw as these thousands
        keep = plotted_points(len(far))
        far, tar = far[keep], tar[keep]
    # FAR = 0 has no place on a log axis. Clip it (rather than drop it) to half the smallest
    # measurable FAR, so the TAR reached with no false accepts still shows at the left edge.
    floor = 1.0 / negatives / 2
    axes.plot(far.clamp(min=floor).numpy(), tar.numpy(), color="tab:blue", linewidth=1.5)
    axes.set_xscale("log")
    axes.set_xlim(floor, 1.0)
    axes.set_ylim(0.0, 1.02)
    point_far, point_tar = operating_point(scores, is_same, threshold)
    label = f"thr {threshold:.3f}: TAR {point_tar:.3f} @ FAR {point_far:.3g}"
    axes.plot([max(point_far, floor)], [point_tar], "o", color="tab:red", label=label)
    axes.legend(loc="lower right")
    axes.grid(True, which="major", alpha=0.5)
    axes.grid(True, which="minor", alpha=0.15)


def plotted_points(count: int) -> torch.Tensor:
    """Sorted indices of at most PLOTTED_POINTS + 1 of ``count`` curve points, log-spaced, both ends kept."""
    steps = torch.logspace(0, math.log10(count - 1), PLOTTED_POINTS, dtype=torch.float64).long()
    steps.clamp_(max=count - 1)  # the last power may round a hair past the end
    return torch.unique(torch.cat([torch.zeros(1, dtype=torch.long), steps, torch.tensor([count - 1])]))


def _draw_histograms(axes: Axes, scores: torch.Tensor, is_same: torch.Tensor, threshold: float) -> None:
    axes.set_xlabel("cosine similarity")
    axes.set_ylabel("density")
    axes.set_title("score distribution")
    if len(scores) == 0:
        _draw_message(axes, "no pairs")
        return
    low, high = float(scores.min()), float(scores.max())
    bins = HISTOGRAM_BINS
    if high <= low:
        # All scores equal: one bin centred on the value, given some width so it can be drawn.
        low, high, bins = low - 0.05, high + 0.05, 1
    # Shared edges so the two histograms compare bin for bin.
    edges = torch.linspace(low, high, bins + 1).numpy()
    for flag, name, color in ((True, "genuine", "tab:green"), (False, "impostor", "tab:orange")):
        chosen = scores[is_same == flag]
        if len(chosen) == 0:
            continue
        label = f"{name} (n={len(chosen)})"
        axes.hist(chosen.numpy(), bins=edges, density=True, alpha=0.5, color=color, label=label)
    axes.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.3f}")
    axes.legend(loc="best")


def verification_figure(scores: torch.Tensor, is_same: torch.Tensor, threshold: float, title: str) -> Figure:
    """ROC on a log-FAR axis (left) and genuine/impostor score histograms (right).

    Args:
        scores: (P,) similarity of each pair.
        is_same: (P,) True for genuine pairs.
        threshold: the operating threshold, marked on both panels.
        title: the figure title.
    Returns:
        A matplotlib Figure with an Agg canvas attached; no pyplot state is involved.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scores, is_same = _as_pairs(scores, is_same)
    figure = Figure(figsize=FIGURE_SIZE, layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself to the figure
    roc_axes, histogram_axes = figure.subplots(1, 2)
    _draw_roc(roc_axes, scores, is_same, threshold)
    _draw_histograms(histogram_axes, scores, is_same, threshold)
    figure.suptitle(title)
    return figure


def save_verification_plot(
    path: str | Path, scores: torch.Tensor, is_same: torch.Tensor, threshold: float, title: str
) -> Path:
    """Renders ``verification_figure`` to a PNG at ``path``, creating its folder.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = verification_figure(scores, is_same, threshold, title)
    figure.savefig(path, format="png", dpi=DPI)
    return path
