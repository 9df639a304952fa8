"""What a training run prints about its speed."""

import pytest

from facetrain.training.messages import format_epoch, rate


@pytest.mark.parametrize(
    "value, shown", [(1234.4, "1234"), (10.0, "10"), (9.87, "9.9"), (0.41, "0.41"), (0.004, "0.004"), (0.0, "0")]
)
def test_a_slow_rate_is_never_shown_as_zero(value, shown):
    assert rate(value) == shown


def test_the_epoch_line_carries_the_rate():
    stats = {"loss": 1.0, "accuracy": 0.5, "lr": 0.1, "images_per_sec": 0.4}
    assert "0.4 img/s" in format_epoch(stats)
