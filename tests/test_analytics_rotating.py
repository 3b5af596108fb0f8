"""Bearing-fault frequencies from the catalog geometry, and their signature in a vibration waveform."""

from __future__ import annotations

import numpy as np

from analytics.rotating import band_energy, bearing_findings, fault_frequencies
from smartmine.catalog import load_catalog


def _belt_bearing():  # type: ignore[no-untyped-def]
    belt = load_catalog().types["belt_conveyor"]
    assert belt.rotating is not None and belt.rotating.bearing is not None
    return belt.rotating.bearing


def test_fault_frequencies_follow_the_textbook_formulas() -> None:
    b = _belt_bearing()  # 12 balls, d 22.2 mm, D 142 mm, 0°, 16.5 Hz
    f = fault_frequencies(b)
    assert abs(f["bpfo"] - 6 * 16.5 * (1 - 22.2 / 142)) < 1e-9
    assert abs(f["bpfi"] - 6 * 16.5 * (1 + 22.2 / 142)) < 1e-9
    assert f["ftf"] < 16.5 < f["bpfo"] < f["bpfi"]
    assert abs(fault_frequencies(b, shaft_hz=33.0)["bpfo"] - 2 * f["bpfo"]) < 1e-9


def _waveform(fault_hz: float | None, fs: float = 20_000.0, seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(fs * seconds)) / fs
    x = 0.3 * np.sin(2 * np.pi * 16.5 * t) + 0.2 * rng.standard_normal(len(t))  # running speed + noise
    if fault_hz is not None:
        ring = np.exp(-t[:200] * 2000) * np.sin(2 * np.pi * 4000 * t[:200])  # the resonance an impact excites
        for start in np.arange(0, seconds, 1 / fault_hz):
            i = int(start * fs)
            x[i:i + 200] += ring[: len(x[i:i + 200])]
    return x


def test_an_outer_race_spall_shows_at_bpfo_and_a_healthy_bearing_shows_nothing() -> None:
    b = _belt_bearing()
    bpfo = fault_frequencies(b)["bpfo"]
    found = bearing_findings(_waveform(bpfo), 20_000.0, b, where="Main belt 1 drive bearing")
    assert found and found[0].fault == "bpfo"
    assert "outer-race defect signature at 83.5 Hz" in found[0].message
    assert found[0].harmonics >= 2
    assert bearing_findings(_waveform(None), 20_000.0, b) == []


def test_band_energy_sees_the_running_speed() -> None:
    e = band_energy(_waveform(None), 20_000.0, {"1x": (15.0, 18.0), "hf": (3000.0, 5000.0)})
    assert abs(e["1x"] - 0.3**2 / 2) < 0.01  # the 0.3 amplitude line at 16.5 Hz: power a²/2
    assert e["1x"] > 3 * e["hf"]
