import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageStat

from facetrain.evaluation.metrics import roc_curve
from facetrain.evaluation.plots import operating_point, plotted_points, save_verification_plot, verification_figure


def synthetic_pairs(count: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Genuine scores ~ N(0.6, 0.1) then impostor scores ~ N(0.1, 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    genuine = 0.6 + 0.1 * torch.randn(count, generator=generator)
    impostor = 0.1 + 0.1 * torch.randn(count, generator=generator)
    is_same = torch.cat([torch.ones(count, dtype=torch.bool), torch.zeros(count, dtype=torch.bool)])
    return torch.cat([genuine, impostor]), is_same


def test_saved_plot_is_a_sensible_png(tmp_path: Path):
    scores, is_same = synthetic_pairs()
    path = save_verification_plot(tmp_path / "nested" / "roc.png", scores, is_same, 0.35, "synthetic")
    assert path == tmp_path / "nested" / "roc.png"
    assert path.is_file()
    with Image.open(path) as image:
        width, height = image.size
        assert width > height > 300
        # Not blank: some pixel differs from the background.
        assert max(ImageStat.Stat(image.convert("L")).var) > 0


def test_figure_panels_and_labels():
    scores, is_same = synthetic_pairs()
    figure = verification_figure(scores, is_same, 0.35, "synthetic")
    roc_axes, histogram_axes = figure.axes
    assert roc_axes.get_xscale() == "log"
    assert roc_axes.get_xlabel() == "false accept rate (FAR)"
    assert roc_axes.get_ylabel() == "true accept rate (TAR)"
    assert roc_axes.get_legend().get_texts()[0].get_text().startswith("thr 0.350: TAR ")
    legend = [text.get_text() for text in histogram_axes.get_legend().get_texts()]
    assert legend == ["genuine (n=300)", "impostor (n=300)", "threshold 0.350"]
    assert histogram_axes.get_xlabel() == "cosine similarity"
    assert figure.get_suptitle() == "synthetic"


def test_operating_point_hand_case():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.4, 0.3])
    same = torch.tensor([True, True, False, True, False, False])
    # Accepted at 0.65: 0.9, 0.8 (genuine) and 0.7 (impostor).
    far, tar = operating_point(scores, same, 0.65)
    assert far == pytest.approx(1 / 3)
    assert tar == pytest.approx(2 / 3)
    # The threshold itself is accepted (score >= threshold).
    assert operating_point(scores, same, 0.6) == (pytest.approx(1 / 3), pytest.approx(1.0))


def test_operating_point_agrees_with_roc_curve():
    scores, is_same = synthetic_pairs(count=50, seed=1)
    far, tar, thresholds = roc_curve(scores, is_same)
    for k in range(1, len(thresholds), 7):
        assert operating_point(scores, is_same, float(thresholds[k])) == (
            pytest.approx(float(far[k])),
            pytest.approx(float(tar[k])),
        )


def test_operating_point_of_a_missing_class_is_nan():
    far, tar = operating_point(torch.tensor([0.2, 0.8]), torch.tensor([True, True]), 0.5)
    assert math.isnan(far)
    assert tar == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("scores", "is_same"),
    [
        (torch.tensor([0.2, 0.5, 0.9]), torch.tensor([True, True, True])),
        (torch.tensor([0.2, 0.5, 0.9]), torch.tensor([False, False, False])),
        (torch.full((6,), 0.4), torch.tensor([True, False, True, False, True, False])),
        (torch.zeros(0), torch.zeros(0, dtype=torch.bool)),
    ],
    ids=["genuine-only", "impostor-only", "all-equal", "empty"],
)
def test_degenerate_inputs_still_render(tmp_path: Path, scores: torch.Tensor, is_same: torch.Tensor):
    path = save_verification_plot(tmp_path / "plot.png", scores, is_same, 0.4, "degenerate")
    with Image.open(path) as image:
        assert image.size[0] > image.size[1]


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="is_same"):
        operating_point(torch.zeros(3), torch.zeros(2, dtype=torch.bool), 0.5)


def test_importing_plots_does_not_import_matplotlib():
    code = "import sys, facetrain.evaluation.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("count", [20_001, 20_002, 50_000, 123_457])
def test_a_long_roc_is_drawn_from_a_thinned_curve_that_keeps_both_ends(count: int):
    """Millions of pairs (IJB-C's 15.7M) are drawn as at most PLOTTED_POINTS points, from (0, 0) to (1, 1)."""
    generator = torch.Generator().manual_seed(count)
    scores = torch.rand(count, generator=generator, dtype=torch.float64)
    is_same = torch.rand(count, generator=generator) < 0.3
    figure = verification_figure(scores, is_same, 0.5, "long")
    line = figure.axes[0].get_lines()[0]
    far, tar = line.get_xdata(), line.get_ydata()
    assert len(far) <= 20_002 and tar[0] == 0.0 and far[-1] == 1.0 and tar[-1] == 1.0
    assert all(far[i] <= far[i + 1] for i in range(len(far) - 1))


@pytest.mark.parametrize("count", [20_001, 1_000_003, 13_581_700, 15_658_490])
def test_thinned_points_stay_inside_the_curve(count: int):
    keep = plotted_points(count)
    assert int(keep[0]) == 0 and int(keep[-1]) == count - 1 and len(keep) <= 20_001
    assert bool((keep[1:] > keep[:-1]).all())
