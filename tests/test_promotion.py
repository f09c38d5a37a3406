"""Promotion beyond noise: the A/B decision's confidence interval and margin."""
import pytest

from evaluators.promotion import decide, t95


def test_clear_win_is_promoted_with_its_interval():
    d = decide([1.10, 1.12, 1.09, 1.11, 1.10, 1.13, 1.08, 1.11], margin=0.02)
    assert d.promote and d.ci_low > 1.02 and d.ci_low < d.mean_ratio < d.ci_high
    assert "beyond the 2% margin" in d.reason


def test_win_inside_the_margin_is_not_promoted():
    d = decide([1.015, 1.02, 1.018, 1.016, 1.021, 1.019], margin=0.02)
    assert not d.promote and d.mean_ratio > 1.0
    assert "does not clear" in d.reason


def test_noisy_win_is_not_promoted():
    # the mean says +5%, but the rounds disagree too much to be sure
    d = decide([1.30, 0.85, 1.20, 0.90, 1.00], margin=0.02)
    assert d.mean_ratio > 1.04 and not d.promote and d.ci_low < 1.0


def test_loss_is_not_promoted():
    d = decide([0.95, 0.96, 0.94, 0.95], margin=0.02)
    assert not d.promote and d.reason.startswith("not faster")


def test_needs_two_rounds_and_t_quantiles_shrink():
    with pytest.raises(ValueError):
        decide([1.2], margin=0.02)
    assert t95(1) > t95(5) > t95(30) > t95(100) == 1.96
