"""Analytics benchmark: detector throughput (batch and streaming), limit-rule recall and delay, early
warning lead time, and the NAB score of the file scorer.

``smartmine bench analytics [--readings N] [--nab DIR] [--json]``. Throughput is measured on one core
(numpy's kernels here are single-threaded) on synthetic plant series: a methane signal with noise, a
slow ramp, spikes and steps. Numbers go to docs/benchmarks.md; no test asserts a timing.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

T0 = 1_800_000_000_000_000_000
NAB_DIR = Path("/work/shared/datasets/nab")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--readings", type=int, default=1_000_000, help="samples per batch measurement")
    parser.add_argument("--stream-readings", type=int, default=100_000, help="samples per streaming measurement")
    parser.add_argument("--nab", default=str(NAB_DIR), help="NAB folder for the score ('' skips it)")


def _series(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = 0.4 + 0.01 * rng.standard_normal(n)
    x[n // 2:] += np.linspace(0.0, 0.2, n - n // 2)
    x[rng.integers(0, n, n // 5000)] += 0.3
    ts = T0 + np.arange(n, dtype=np.int64) * 1_000_000_000
    return ts, x


def _best_of(fn: Callable[[], Any], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _factories() -> dict[str, Callable[[], Any]]:
    from analytics.detector import SensorContext
    from analytics.early import EarlyWarning
    from analytics.health import Dropout, Flatline, PhysicalRange
    from analytics.limits import LimitRule
    from analytics.statistical import Cusum, EwmaChart, RobustZ
    from smartmine.catalog import load_catalog

    eq = load_catalog().equipment("yanshan_mine", "gas_upper_corner_1203")
    assert eq is not None
    ctx = SensorContext.from_catalog(eq, "ch4_pct")
    lim = ctx.limits[0]
    return {
        "limit": lambda: LimitRule(ctx, lim),
        "mad": lambda: RobustZ(ctx, window=240, hop=30, novelty=900),
        "ewma": lambda: EwmaChart(ctx, window=240, hop=30, novelty=900),
        "cusum": lambda: Cusum(ctx, window=240, hop=30, novelty=900),
        "seasonal": lambda: _seasonal(ctx),
        "early": lambda: EarlyWarning(ctx, lim, window=300, hop=10),
        "stuck": lambda: Flatline(ctx, samples=900),
        "dropout": lambda: Dropout(ctx),
        "range": lambda: PhysicalRange(ctx),
    }


def _seasonal(ctx: Any) -> Any:
    from analytics.seasonal import SeasonalBaseline

    return SeasonalBaseline(ctx)


def _run_fresh(make: Callable[[], Any], ts: np.ndarray, x: np.ndarray) -> Any:
    return make().run(ts, x)


def detector_throughput(n_batch: int, n_stream: int) -> dict[str, Any]:
    ts, x = _series(n_batch)
    out: dict[str, Any] = {}
    for name, make in _factories().items():
        make().run(ts[:10_000], x[:10_000])  # imports and caches warm
        batch_s = _best_of(partial(_run_fresh, make, ts, x))
        det = make()
        step = det.step
        tl, xl = ts[:n_stream].tolist(), x[:n_stream].tolist()
        start = time.perf_counter()
        for t, v in zip(tl, xl, strict=True):
            step(t, v)
        stream_s = time.perf_counter() - start
        out[f"batch_{name}_readings_per_s"] = round(n_batch / batch_s)
        out[f"stream_{name}_readings_per_s"] = round(n_stream / stream_s)
    return out


def plant_suite_throughput(n_batch: int, n_stream: int) -> dict[str, Any]:
    """Every detector of a gas monitor's methane sensor together, and the streaming job's decode+score
    path on encoded telemetry: a belt conveyor (7 readings per message), and a whole mine's equipment
    interleaved, each sensor at its catalog rate (about 2.7 readings per message)."""
    import pandas as pd

    from analytics.engine import EquipmentScorer, sensor_detectors
    from smartmine.catalog import load_catalog
    from smartmine.config import Settings

    catalog = load_catalog()
    settings = Settings()
    gas = catalog.equipment("yanshan_mine", "gas_upper_corner_1203")
    assert gas is not None
    ts, x = _series(n_batch)
    scorer = EquipmentScorer(gas, settings.analytics)
    per_sensor = len(sensor_detectors(scorer.contexts["ch4_pct"], settings.analytics))
    frame = pd.DataFrame({"time": pd.to_datetime(ts, utc=True), "ch4_pct": x})
    batch_s = _best_of(lambda: EquipmentScorer(gas, settings.analytics).run(frame), repeat=2)
    out: dict[str, Any] = {"detectors_per_gauge_sensor": per_sensor,
                           "batch_plant_suite_readings_per_s": round(n_batch / batch_s)}

    belt = catalog.equipment("yanshan_mine", "belt_main_1")
    assert belt is not None
    mine = list(catalog.all_equipment("yanshan_mine"))
    mine_rate = sum(1 / s.spec.sample_period_s for eq in mine for s in eq.sensors.values())  # readings/s
    workloads = {"stream_job": _telemetry([belt], max(n_stream // len(belt.sensors), 1), at_sensor_rate=False),
                 "stream_job_mine": _telemetry(mine, max(round(n_stream / mine_rate), 1), at_sensor_rate=True)}
    for label, messages in workloads.items():
        # The job as configured (micro-batches), then scoring every message at once (micro_batch_s = 0).
        for suffix, micro_batch_s in (("", settings.analytics.micro_batch_s), ("_per_sample", 0.0)):
            readings_per_s, messages_per_s = _stream_rate(settings, catalog, messages, micro_batch_s)
            out[f"{label}{suffix}_readings_per_s"] = round(readings_per_s)
            out[f"{label}{suffix}_messages_per_s"] = round(messages_per_s)
    return out


def _telemetry(equipment: list[Any], seconds: int, *, at_sensor_rate: bool) -> list[tuple[str, bytes]]:
    """Encoded messages of ``equipment``, one per equipment per second, readings near the middle of each
    sensor's normal range; every sensor in every message, or each at its catalog sample period."""
    from datetime import UTC, datetime, timedelta

    from smartmine.wire import encode_telemetry, topic

    rng = np.random.default_rng(1)
    start = datetime(2026, 11, 27, tzinfo=UTC)
    out = []
    for i in range(seconds):
        for eq in equipment:
            readings = {}
            for sid, s in eq.sensors.items():
                if at_sensor_rate and i % max(round(s.spec.sample_period_s), 1):
                    continue
                lo, hi = s.spec.normal
                readings[sid] = round(lo + (hi - lo) * (0.5 + 0.05 * rng.standard_normal()), 4)
            if readings:
                out.append((topic(eq.site, eq.area, eq.id, prefix="bench"),
                            encode_telemetry(start + timedelta(seconds=i), i, readings)))
    return out


def _stream_rate(settings: Any, catalog: Any, messages: list[tuple[str, bytes]],
                 micro_batch_s: float) -> tuple[float, float]:
    """(readings/s, messages/s) of ``StreamJob.handle`` over ``messages`` (no broker, no sinks)."""
    from analytics.jobs import StreamJob

    cfg = settings.analytics.model_copy(update={"micro_batch_s": micro_batch_s})
    job = StreamJob(settings.model_copy(update={"topic_prefix": "bench", "analytics": cfg}), catalog, sinks=[])
    start = time.perf_counter()
    for name, payload in messages:
        job.handle(name, payload)
    job.flush()
    seconds = time.perf_counter() - start
    return job.summary.readings / seconds, len(messages) / seconds


def limit_recall() -> dict[str, Any]:
    """Random methane series crossing the working-face limits: every violating sample flagged, at once."""
    from analytics.detector import SensorContext
    from analytics.limits import LimitRule
    from smartmine.catalog import load_catalog

    eq = load_catalog().equipment("yanshan_mine", "gas_upper_corner_1203")
    assert eq is not None
    ctx = SensorContext.from_catalog(eq, "ch4_pct")
    rng = np.random.default_rng(42)
    violating = flagged = late = 0
    for _ in range(200):
        x = np.clip(0.6 + np.cumsum(0.05 * rng.standard_normal(2000)), 0, 5)
        v = LimitRule(ctx, ctx.limits[0]).run(T0 + np.arange(2000, dtype=np.int64), x)
        bad = x >= 1.0
        violating += int(bad.sum())
        flagged += int((v.level[bad] > 0).sum())
        late += int(((x >= 1.5) & (v.level < 4)).sum())
    return {"limit_violating_samples": violating, "limit_recall": flagged / violating if violating else None,
            "limit_power_off_not_emergency": late, "limit_delay_samples": 0 if flagged == violating else None}


def early_lead() -> dict[str, Any]:
    """Slow methane ramps (0.01 to 0.05 %/min) towards 1.0 %: how long before the crossing is the warning?"""
    from analytics.detector import SensorContext
    from analytics.early import EarlyWarning
    from smartmine.catalog import load_catalog
    from smartmine.config import AnalyticsSettings

    cfg = AnalyticsSettings()
    eq = load_catalog().equipment("yanshan_mine", "gas_upper_corner_1203")
    assert eq is not None
    ctx = SensorContext.from_catalog(eq, "ch4_pct")
    rng = np.random.default_rng(7)
    leads = []
    for rate_per_min in (0.01, 0.02, 0.03, 0.04, 0.05):
        n = 600 + int(0.7 / rate_per_min * 60) + 600
        x = 0.3 + 0.01 * rng.standard_normal(n)
        x[600:] += np.arange(n - 600) * rate_per_min / 60
        ts = T0 + np.arange(n, dtype=np.int64) * 1_000_000_000
        v = EarlyWarning(ctx, ctx.limits[0], window=round(cfg.early_window_s), hop=round(cfg.early_hop_s),
                         horizon_s=cfg.early_horizon_s, min_t=cfg.early_min_t).run(ts, x)
        crossing = int(np.argmax(x >= 1.0))
        first = int(np.argmax(v.level > 0)) if v.level.any() else None
        leads.append(None if first is None or first >= crossing else crossing - first)
    found = [lead for lead in leads if lead is not None]
    return {"early_ramps": len(leads), "early_warned_before_crossing": len(found),
            "early_lead_s_min": min(found) if found else None, "early_lead_s_max": max(found) if found else None}


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out.update(detector_throughput(args.readings, args.stream_readings))
    out.update(plant_suite_throughput(args.readings, args.stream_readings))
    out.update(limit_recall())
    out.update(early_lead())
    if args.nab and Path(args.nab).is_dir():
        from analytics.evaluate import evaluate_nab

        summary, _ = evaluate_nab(Path(args.nab))
        out.update({k if k.startswith(("nab_", "onset_nab_")) else f"nab_{k}": v for k, v in summary.items()})
    return out
