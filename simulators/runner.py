"""Drive a simulation into a sink at a given speed, with a progress line and a summary.

``speed`` is simulated seconds per wall second (1 = real time); ``None`` means as fast as possible.
The wall clock only paces the loop; it never enters the generated telemetry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from simulators.engine import Simulation
from simulators.sinks import Sink

log = logging.getLogger(__name__)


def run(sim: Simulation, sink: Sink, *, speed: float | None = 1.0, progress_every_s: float = 5.0,
        progress: Callable[[str], None] | None = None, stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Run until the duration is over (or ``stop()`` says so); return the summary."""
    sink.open(sim)
    wall0 = time.monotonic()
    next_report = wall0 + progress_every_s
    behind_warned = False
    interrupted = False
    try:
        for batch in sim.batches():
            sink.write(batch)
            now = time.monotonic()
            if speed is not None:
                due = wall0 + sim.tick * sim.dt_s / speed
                while due > now and not (stop is not None and stop()):
                    time.sleep(min(due - now, 0.2))  # in slices, so a stop request is heard at once
                    now = time.monotonic()
                if now - due > max(5.0, 10 * sim.dt_s / speed) and not behind_warned:
                    log.warning("the simulation is %.1f s behind %gx real time: too many devices for this "
                                "machine at this speed", now - due, speed)
                    behind_warned = True
            if progress is not None and now >= next_report:
                progress(_progress_line(sim, now - wall0))
                next_report = now + progress_every_s
            if stop is not None and stop():
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        sink_summary = sink.close()
    wall = time.monotonic() - wall0
    summary: dict[str, Any] = {
        "simulated_from": sim.start.isoformat().replace("+00:00", "Z"),
        "simulated_s": round(sim.tick * sim.dt_s, 3),
        "devices": len(sim.devices),
        "faults": len(sim.faults),
        "messages": sim.stats.messages,
        "readings": sim.stats.readings,
        "wall_s": round(wall, 3),
        "messages_per_s": round(sim.stats.messages / wall, 1) if wall > 0 else None,
        "readings_per_s": round(sim.stats.readings / wall, 1) if wall > 0 else None,
        **sink_summary,
    }
    if interrupted:
        summary["interrupted"] = True
    return summary


def _progress_line(sim: Simulation, wall_s: float) -> str:
    rate = sim.stats.messages / wall_s if wall_s > 0 else 0.0
    total = f"/{sim.n_ticks * sim.dt_s:.0f}" if sim.n_ticks is not None else ""
    return (f"simulated {sim.tick * sim.dt_s:.0f}{total} s (at {sim.time_of(sim.tick):%Y-%m-%d %H:%M:%S}Z): "
            f"{sim.stats.messages:,} messages, {sim.stats.readings:,} readings, {rate:,.0f} msg/s")
