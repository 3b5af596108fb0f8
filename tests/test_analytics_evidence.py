"""The false-alarm budget's arithmetic (analytics/evidence.py): calibrated tail probabilities that are the
same in every form, combinations that hold the family-wise rate however many detectors, and scores that
rank."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.evidence import (
    TailCalibrator,
    alpha_per_row,
    combine_pvalues,
    pvalue_from_score,
    score_from_pvalue,
    sidak,
)


def test_budget_arithmetic_spends_the_days_budget_over_its_rows() -> None:
    # one false page a day over a day of 1 s rows, shared by 60 detectors
    alpha = alpha_per_row(1.0, 86_400)
    assert alpha == pytest.approx(1 / 86_400)
    per_detector = sidak(alpha, 60)
    assert 1 - (1 - per_detector) ** 60 == pytest.approx(alpha)
    with pytest.raises(ValueError, match="budget"):
        alpha_per_row(0, 100)


@pytest.mark.parametrize("method", ["cauchy", "sidak", "bonferroni"])
@pytest.mark.parametrize("detectors", [1, 10, 200])
def test_family_false_alarm_rate_stays_at_the_budget_however_many_detectors(method: str, detectors: int) -> None:
    # independent null p-values: the share of rows whose family p is below alpha is at most about alpha,
    # whether a file has one column or two hundred
    rng = np.random.default_rng(7)
    p = rng.uniform(size=(20_000, detectors))
    alpha = 0.01
    rate = (combine_pvalues(p, method) <= alpha).mean()
    assert rate <= alpha * 1.3
    # while one strong detector still makes the row significant
    p[:100, 0] = 1e-9
    assert (combine_pvalues(p[:100], method) <= alpha).all()


def test_combination_ignores_detectors_that_did_not_score() -> None:
    p = np.array([[np.nan, np.nan], [0.001, np.nan], [0.001, 0.5]])
    out = combine_pvalues(p, "sidak")
    assert out[0] == 1.0
    assert out[1] == pytest.approx(0.001)
    assert out[2] == pytest.approx(1 - 0.999**2)


def test_score_is_monotone_in_the_evidence_and_half_at_the_budget() -> None:
    alpha = 1e-4
    p = np.logspace(-12, 0, 200)
    s = score_from_pvalue(p, alpha)
    assert (np.diff(s) <= 0).all() and s.min() == 0.0 and s.max() == 1.0
    assert score_from_pvalue(alpha, alpha) == pytest.approx(0.5)
    assert pvalue_from_score(0.25, alpha) == pytest.approx(1e-2)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(min_value=-50, max_value=50), min_size=0, max_size=400),
       st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=12))
def test_calibrator_batch_equals_streaming_equals_micro_batches(values: list[float], cuts: list[int]) -> None:
    stat = np.abs(np.array(values, dtype=np.float64))
    if len(stat):
        stat[::17] = np.nan  # a detector that did not score that row
    batch = TailCalibrator(window=40, hop=7).pvalues(stat)
    one = TailCalibrator(window=40, hop=7)
    stream = np.array([one.push(float(s)) for s in stat])
    micro = TailCalibrator(window=40, hop=7)
    parts, i = [], 0
    for c in cuts * 10:
        if i >= len(stat):
            break
        parts.append(micro.extend(stat[i:i + c]))
        i += c
    if i < len(stat):
        parts.append(micro.extend(stat[i:]))
    mb = np.concatenate(parts) if parts else np.zeros(0)
    np.testing.assert_array_equal(batch, stream)
    np.testing.assert_array_equal(batch, mb)


def test_calibrated_pvalues_are_uniform_enough_in_the_tail_on_noise() -> None:
    # a chi-like statistic of plant noise: the calibrated p is below 1e-3 about 1e-3 of the time
    rng = np.random.default_rng(3)
    stat = np.abs(rng.standard_normal(200_000))
    p = TailCalibrator(window=480, hop=30).pvalues(stat)
    ok = ~np.isnan(p)
    for level in (1e-2, 1e-3):
        rate = (p[ok] <= level).mean()
        assert level / 3 <= rate <= level * 3, (level, rate)
