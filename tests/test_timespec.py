"""One grammar of times and spans for every command (smartmine/timespec.py, docs/stack.md "Times and spans"):
the forms each command accepts, the errors that name the bad input, and `smartmine report --since now-1h`,
which the report's own grammar used to refuse while `smartmine export --from now-1h` took it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from analytics.jobs import parse_time as analytics_time
from dashboards.report import parse_when as report_time
from replay.timeutil import parse_instant as replay_time_ns
from simulators.scenario import parse_time as scenario_time
from smartmine.cli import main
from smartmine.config import Settings
from smartmine.influx import InfluxClient
from smartmine.schema import series_prefix, telemetry_line
from smartmine.timespec import TimeSpecError, parse_duration, parse_instant

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ("90s", 90.0), ("500ms", 0.5), ("15m", 900.0), ("2h", 7200.0), ("1h30m", 5400.0),
    ("1.5h", 5400.0), ("1d", 86400.0), ("1w", 604800.0), (" 2H ", 7200.0),
])
def test_spans(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "expected"), [
    ("now", NOW), ("NOW", NOW), ("now-1h", NOW - timedelta(hours=1)), ("now - 1h30m", NOW - timedelta(minutes=90)),
    ("now+15m", NOW + timedelta(minutes=15)), ("now-90", NOW - timedelta(seconds=90)),
    ("1h", NOW - timedelta(hours=1)), ("-2h", NOW - timedelta(hours=2)), ("1w", NOW - timedelta(weeks=1)),
    ("2026-11-27T08:00:00Z", datetime(2026, 11, 27, 8, tzinfo=UTC)),
    ("2026-11-27T16:00+08:00", datetime(2026, 11, 27, 8, tzinfo=UTC)),
    ("2026-11-27T08:00:00", datetime(2026, 11, 27, 8, tzinfo=UTC)),  # no zone: UTC
    ("2026-11-27", datetime(2026, 11, 27, tzinfo=UTC)),
])
def test_instants(text: str, expected: datetime) -> None:
    assert parse_instant(text, NOW) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("yesterday", "time 'yesterday' is neither a duration ago"),
    ("now-1x", "time 'now-1x' is neither"),
    ("now 1h", "time 'now 1h' is neither"),
    ("90", "time '90' has no unit: write how long ago, e.g. 90s"),
    ("+1h", "time '+1h': a time ahead is written from now, as in now+15m"),
    ("2026-13-01T00:00:00Z", "time '2026-13-01T00:00:00Z' is neither"),
    ("", "time '' is neither"),
])
def test_a_bad_time_is_refused_naming_it(text: str, message: str) -> None:
    with pytest.raises(TimeSpecError) as err:
        parse_instant(text, NOW)
    assert message in str(err.value)


def test_a_bad_span_is_refused_naming_it() -> None:
    with pytest.raises(TimeSpecError, match=r"duration '2 fortnights' is not understood; use e\.g\. 90s"):
        parse_duration("2 fortnights")


@pytest.mark.parametrize("text", ["now-1h", "1h", "-1h", "2026-11-27T16:00+08:00", "2026-11-27T08:00:00"])
def test_every_command_reads_a_time_the_same_way(text: str) -> None:
    """report --since, analyze batch --from, export/replay --from and simulate --start: one meaning."""
    expected = parse_instant(text, NOW)
    assert report_time(text, NOW) == expected
    assert analytics_time(text, NOW) == expected
    if not text[0].isdigit() or "T" not in text:  # relative: these two read the clock themselves
        assert abs(replay_time_ns(text) - parse_instant(text).timestamp() * 1e9) < 5e9
        assert abs((scenario_time(text) - parse_instant(text)).total_seconds()) < 5
    else:
        assert replay_time_ns(text) == int(expected.timestamp()) * 1_000_000_000
        assert scenario_time(text) == expected


def test_report_since_now_minus_1h_is_accepted(settings: Settings, influx: InfluxClient, tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    prefix = series_prefix("gas_monitor", "yanshan_mine", "face_1203", "gas_upper_corner_1203")
    influx.write_lines([telemetry_line(prefix, now - timedelta(minutes=10 - i), i, {"ch4_pct": (0.4, "good")})
                        for i in range(10)])
    out = tmp_path / "report"
    assert main(["report", "--since", "now-1h", "--until", "now", "--site", "yanshan_mine", "--out", str(out)]) == 0
    assert "gas_upper_corner_1203" in (out / "index.html").read_text(encoding="utf-8")


def test_a_command_given_a_bad_time_says_which_and_exits_2(settings: Settings,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "batch", "--from", "yesterday"]) == 2
    assert "time 'yesterday' is neither a duration ago" in capsys.readouterr().err
