"""NAB's own scorer (analytics/nab.py) on hand-made files whose score can be worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analytics.nab import (
    PROFILES,
    LabelledSeries,
    file_result,
    probation_rows,
    scaled_sigmoid,
    score_corpus,
    sweep_thresholds,
)

N = 1000  # rows per file: probation is the first 150
WINDOW = (500, 599)
STANDARD = PROFILES["standard"]
EARLY = scaled_sigmoid(-1.0)  # a detection on a window's first row: 0.9866


def series(*hits: int, value: float = 1.0, name: str = "a.csv",
           windows: tuple[tuple[int, int], ...] | list[tuple[int, int]] = (WINDOW,)) -> LabelledSeries:
    scores = np.zeros(N)
    scores[list(hits)] = value
    return LabelledSeries(name, scores, list(windows))


def test_probation_is_15_percent_of_a_file_and_at_most_750_rows() -> None:
    assert probation_rows(1000) == 150
    assert probation_rows(22695) == 750


def test_a_detection_on_the_first_row_of_the_only_window_is_all_but_perfect() -> None:
    result = score_corpus([series(500)])["standard"]
    assert result.threshold == 1.0
    assert result.raw == pytest.approx(EARLY)
    assert result.null == -1.0 and result.perfect == 1.0  # NAB's perfect: tp weight per window
    assert result.score == pytest.approx(100 * (EARLY + 1) / 2)  # 99.33


def test_no_detection_at_all_scores_zero_and_a_constant_score_is_no_better() -> None:
    assert score_corpus([series()])["standard"].score == 0.0
    constant = LabelledSeries("a.csv", np.full(N, 0.5), [WINDOW])
    # Flagging every row finds the window but costs ~760 false positives: the optimiser flags nothing.
    assert score_corpus([constant])["standard"].score == 0.0


def test_one_false_positive_before_the_first_window_costs_the_full_fp_weight() -> None:
    for profile in ("standard", "reward_low_fp_rate"):
        clean = score_corpus([series(500)])[profile].raw
        with_fp = score_corpus([series(200, 500)])[profile].raw
        assert clean - with_fp == pytest.approx(PROFILES[profile]["fp"])


def test_a_late_detection_is_worth_less_than_an_early_one() -> None:
    early = score_corpus([series(500)])["standard"].raw
    late = score_corpus([series(590)])["standard"].raw
    assert late == pytest.approx(scaled_sigmoid(-10 / 100)) and late < early
    # Only the first detection in a window counts: a later one adds nothing.
    assert score_corpus([series(500, 590)])["standard"].raw == pytest.approx(early)


def test_a_false_positive_just_after_a_window_costs_little_and_far_after_it_the_full_weight() -> None:
    base = score_corpus([series(500)])["standard"].raw
    just_after = base - score_corpus([series(500, 600)])["standard"].raw
    far_after = base - score_corpus([series(500, 950)])["standard"].raw
    assert just_after == pytest.approx(-0.11 * scaled_sigmoid(1 / 99))  # 0.0028
    assert far_after == pytest.approx(0.11)  # > 3 widths after the window


def test_every_row_at_or_above_the_threshold_is_a_detection() -> None:
    held = series(500, *range(200, 400))  # a score held high for 200 rows before the window
    r = file_result(held, 1.0, STANDARD)
    assert r["fp"] == 200 and r["tp"] == 1
    assert r["raw"] == pytest.approx(EARLY - 200 * 0.11)


def test_detections_in_the_probationary_period_are_not_scored() -> None:
    assert score_corpus([series(10, 500)])["standard"].raw == pytest.approx(EARLY)


def test_a_missed_window_costs_the_fn_weight_of_the_profile() -> None:
    two = [(300, 399), WINDOW]
    r = score_corpus([series(500, windows=two)])
    assert r["standard"].raw == pytest.approx(EARLY - 1.0)
    assert r["reward_low_fn_rate"].raw == pytest.approx(EARLY - 2.0)
    assert r["reward_low_fn_rate"].score == pytest.approx(100 * (EARLY - 2 + 4) / (2 + 4))


def test_one_threshold_for_the_corpus_not_one_per_file() -> None:
    # File a has its window's detection at 0.9 and noise at 0.6; file b its detection at 0.5.
    a = series(500, value=0.9, name="a.csv")
    a.scores[[200, 250, 300]] = 0.6
    b = series(500, value=0.5, name="b.csv")
    result = score_corpus([a, b])["standard"]
    # Per file the best would be 0.9 for a and 0.5 for b; one threshold at 0.5 costs a three FPs
    # (3 x 0.11) to gain b's window (+1.99): 0.5 wins for both.
    assert result.threshold == 0.5
    assert result.per_file["a.csv"]["fp"] == 3 and result.per_file["b.csv"]["tp"] == 1
    assert result.raw == pytest.approx(2 * EARLY - 0.33)


def test_the_sweep_equals_scoring_every_threshold_one_by_one() -> None:
    rng = np.random.default_rng(3)
    corpus = [LabelledSeries(f"f{i}.csv", np.round(rng.random(N), 2), [(400, 450), (700, 780)])
              for i in range(3)]
    for weights in PROFILES.values():
        thresholds, totals = sweep_thresholds(corpus, weights)
        assert math.isclose(totals[0], -2 * 3 * weights["fn"])  # nothing detected
        for t, total in zip(thresholds[::7], totals[::7], strict=True):
            assert total == pytest.approx(sum(file_result(s, t, weights)["raw"] for s in corpus))
