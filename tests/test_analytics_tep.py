"""The process monitor (dynamic PCA, calibrated p-values) on a few Tennessee Eastman files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analytics.multivariate import ProcessMonitor, tail_pvalues
from analytics.tep import FAULT_START, read_tep

TEP = Path(__file__).resolve().parents[1] / ".." / ".." / "shared" / "datasets" / "tep"
if not TEP.is_dir():
    TEP = Path("/work/shared/datasets/tep")


def test_tail_pvalues_are_the_calibrated_share_of_reference_values_at_least_as_large() -> None:
    ref = np.arange(1.0, 100.0)  # 99 reference values 1..99
    p = tail_pvalues(np.array([0.0, 50.0, 99.0, 150.0]), ref)
    assert p[0] == 1.0  # below every reference value: (1 + 99) / 100
    assert p[1] == pytest.approx(51 / 100)  # 50..99 are at least as large
    assert p[2] == pytest.approx(2 / 100)
    assert p[3] < 1 / 100  # beyond the reference the tail keeps falling: it still ranks


@pytest.mark.skipif(not TEP.is_dir(), reason="shared TEP data not present")
def test_monitor_learned_on_normal_history_finds_a_feed_ratio_fault_and_stays_quiet_before_it() -> None:
    cols, reference = read_tep(TEP / "d00.csv")
    monitor = ProcessMonitor(cols)
    monitor.fit(reference)
    _, rows = read_tep(TEP / "d01_te.csv")  # A/C feed ratio step at sample 161
    _, score, flagged, drivers = monitor.judge(rows, before=reference)
    assert flagged[FAULT_START:].mean() > 0.95
    assert flagged[:FAULT_START].mean() < 0.1
    assert ((score >= 0.5) == flagged).all() and ((score >= 0) & (score <= 1)).all()
    assert all(":" in d for d in drivers)
    # Causal: changing later rows does not move earlier scores.
    changed = rows.copy()
    changed[500:] += 10.0
    _, score2, _, _ = monitor.judge(changed, before=reference)
    assert np.array_equal(score[:500], score2[:500])


@pytest.mark.skipif(not TEP.is_dir(), reason="shared TEP data not present")
def test_score_file_on_many_signals_uses_the_process_monitor(tmp_path: Path) -> None:
    """score-file on d00 followed by a fault file: the first 500 rows are its reference, then it flags
    what the TEP protocol flags (fault 5: the compensating cooling water valve, xmv_11)."""
    import pandas as pd

    from analytics.scorefile import score_file

    joined = pd.concat([pd.read_csv(TEP / "d00.csv"), pd.read_csv(TEP / "d05_te.csv")], ignore_index=True)
    joined["label"] = 0
    src = tmp_path / "tep5.csv"
    joined.to_csv(src, index=False)
    out = score_file(src, tmp_path / "out.csv", "timestamp", exclude=["label"])
    flags = out["is_anomaly"].to_numpy()
    assert flags[:500].sum() == 0  # the reference
    assert flags[500 + FAULT_START:].mean() > 0.95
    assert flags[500:500 + FAULT_START].mean() < 0.1
    top = out.loc[out["is_anomaly"] == 1, "detector"].value_counts().index[0]
    assert top == "dpca:shift:xmv_11"
    assert out["anomaly_score"].between(0, 1).all()
