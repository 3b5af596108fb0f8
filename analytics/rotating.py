"""Rotating equipment: bearing-fault frequencies and what a vibration waveform says about them.

The telemetry carries vibration as RMS velocity (mm/s) and kurtosis per sample; their limits, trends
and early warnings are handled by the per-sensor detectors (ISO 10816-3 zone limits from the catalog,
time to the zone C/D boundary). When a raw acceleration waveform is available (a portable collector,
a condition-monitoring box), this module looks for the bearing defect itself: a spall on a race makes
an impact each time a rolling element passes, so the *envelope* of the resonance it excites repeats at
the fault frequency. The geometry comes from the catalog (``rotating.bearing``):

    BPFO = n/2 · f_r · (1 − d/D · cos φ)       outer race
    BPFI = n/2 · f_r · (1 + d/D · cos φ)       inner race
    BSF  = D/(2d) · f_r · (1 − (d/D · cos φ)²)  rolling element
    FTF  = f_r/2 · (1 − d/D · cos φ)            cage
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from smartmine.catalog.model import BearingGeometry

FloatArray = np.ndarray


def fault_frequencies(bearing: BearingGeometry, shaft_hz: float | None = None) -> dict[str, float]:
    """BPFO, BPFI, BSF and FTF in Hz for the bearing (at ``shaft_hz``, default the catalog's speed)."""
    fr = shaft_hz if shaft_hz is not None else bearing.shaft_hz
    ratio = bearing.ball_diameter_mm / bearing.pitch_diameter_mm * math.cos(math.radians(bearing.contact_angle_deg))
    n = bearing.rolling_elements
    return {
        "bpfo": n / 2 * fr * (1 - ratio),
        "bpfi": n / 2 * fr * (1 + ratio),
        "bsf": bearing.pitch_diameter_mm / (2 * bearing.ball_diameter_mm) * fr * (1 - ratio * ratio),
        "ftf": fr / 2 * (1 - ratio),
    }


def envelope_spectrum(waveform: FloatArray, fs: float, band_hz: tuple[float, float] | None = None
                      ) -> tuple[FloatArray, FloatArray]:
    """Frequencies and amplitudes of the envelope spectrum (band-pass around the resonance, Hilbert
    envelope, FFT). The default band is fs/8 .. fs/2.5, where bearing resonances usually ring."""
    from scipy.signal import butter, hilbert, sosfiltfilt

    x = np.asarray(waveform, dtype=np.float64)
    lo, hi = band_hz if band_hz is not None else (fs / 8, fs / 2.5)
    sos = butter(4, [lo, hi], btype="bandpass", fs=fs, output="sos")
    envelope = np.abs(hilbert(sosfiltfilt(sos, x - x.mean())))
    envelope -= envelope.mean()
    amplitude = np.abs(np.fft.rfft(envelope * np.hanning(len(envelope)))) * 2 / len(envelope)
    return np.fft.rfftfreq(len(envelope), 1 / fs), amplitude


def band_energy(waveform: FloatArray, fs: float, bands: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Signal power in each band (Welch power spectral density, integrated), e.g. 1x/2x running speed."""
    from scipy.signal import welch

    # one-second segments: 1 Hz resolution, enough to separate 1x, 2x and the bearing lines
    freqs, psd = welch(np.asarray(waveform, dtype=np.float64), fs=fs, nperseg=min(len(waveform), int(fs)))
    df = freqs[1] - freqs[0]
    return {name: float(psd[(freqs >= lo) & (freqs < hi)].sum() * df) for name, (lo, hi) in bands.items()}


@dataclass(frozen=True, slots=True)
class BearingFinding:
    """A bearing-fault frequency standing out of the envelope spectrum."""

    fault: str  # bpfo, bpfi, bsf, ftf
    frequency_hz: float
    peak_ratio: float  # the peak over the spectrum's median level around it
    harmonics: int  # how many of the first harmonics stand out
    message: str


FAULT_WORDS = {"bpfo": "outer-race", "bpfi": "inner-race", "bsf": "rolling-element", "ftf": "cage"}


def bearing_findings(waveform: FloatArray, fs: float, bearing: BearingGeometry, *, where: str = "the bearing",
                     shaft_hz: float | None = None, ratio_threshold: float = 6.0, tolerance: float = 0.03,
                     harmonics: int = 3) -> list[BearingFinding]:
    """Fault frequencies whose envelope-spectrum peaks (fundamental and harmonics) stand out."""
    freqs, amp = envelope_spectrum(waveform, fs)
    out = []
    for fault, f0 in fault_frequencies(bearing, shaft_hz).items():
        ratios = []
        for k in range(1, harmonics + 1):
            f = k * f0
            if f * (1 + tolerance) >= freqs[-1]:
                break
            peak_band = (freqs >= f * (1 - tolerance)) & (freqs <= f * (1 + tolerance))
            around = (freqs >= f * 0.5) & (freqs <= f * 1.5) & ~peak_band
            if not peak_band.any() or not around.any():
                break
            ratios.append(float(amp[peak_band].max() / max(np.median(amp[around]), 1e-12)))
        if ratios and ratios[0] >= ratio_threshold:
            n_harm = sum(1 for r in ratios if r >= ratio_threshold)
            out.append(BearingFinding(
                fault, f0, ratios[0], n_harm,
                f"{where}: {FAULT_WORDS[fault]} defect signature at {f0:.1f} Hz ({fault.upper()}, "
                f"{ratios[0]:.0f}x the background, {n_harm} harmonic(s)): plan a bearing inspection"))
    return sorted(out, key=lambda b: -b.peak_ratio)
