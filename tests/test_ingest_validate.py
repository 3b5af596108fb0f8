"""Ingest's validation on the simulators' real messages: the fast path takes them and stores exactly what the
full (pydantic) validation stores; what it leaves to the full validation is still dead-lettered with its reason.

The property test over hostile payloads is in tests/test_hardening_properties.py.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from ingest.validate import OUT_OF_RANGE, UNKNOWN_SENSOR, Checked, Rejection, Validator
from simulators.engine import generate_raw
from simulators.scenario import available_scenarios, parse_scenario
from smartmine.catalog import Catalog, load_catalog
from smartmine.wire import encode_telemetry, topic

START = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
SECONDS = 90


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def _validators(catalog: Catalog) -> tuple[Validator, Validator]:
    fast, full = (Validator(catalog, "smartmine", max_sample_age_s=7 * 86_400, max_clock_skew_s=300, fast_path=flag)
                  for flag in (True, False))
    return fast, full


def _every_fault_at_once() -> dict[str, object]:
    """Every fault of every shipped scenario, all starting at once, so a short run shows each kind."""
    faults = []
    for path in available_scenarios().values():
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        faults += [{"site": raw.get("site"), **f, "start": "0s", "duration": f"{SECONDS}s"} for f in raw["faults"]]
    return {"name": "every_fault_at_once", "faults": faults}


def test_the_simulators_messages_take_the_fast_path_with_the_same_lines(catalog: Catalog) -> None:
    fast, full = _validators(catalog)
    messages = list(generate_raw(catalog, scenario=parse_scenario(_every_fault_at_once()), start=START,
                                 duration=f"{SECONDS}s"))
    now = (START + timedelta(seconds=SECONDS + 5)).timestamp()
    took_fast = stored = out_of_range = 0
    for t, payload in messages:
        got, expected = fast.check(t, payload, now), full.check(t, payload, now)
        assert got == expected, payload
        target = fast.target(t)
        assert not isinstance(target, Rejection)
        took_fast += fast._fast(target, payload, now) is not None
        stored += expected.line is not None
        out_of_range += expected.out_of_range
    assert len(messages) > 2000 and stored == len(messages)
    assert out_of_range > 0, "the out_of_range fault should have produced flagged readings"
    assert took_fast == len(messages), f"{len(messages) - took_fast} simulator messages missed the fast path"


def test_unusual_but_valid_messages_are_stored_the_same_by_the_full_validation(catalog: Catalog) -> None:
    """What the fast path leaves (an offset, an integer, a quality) still becomes the same line."""
    fast, full = _validators(catalog)
    t = topic("yanshan_mine", "face_1203", "gas_face_1203")
    base = {"v": 1, "seq": 7, "readings": {"ch4_pct": 0.5}}
    now = START.timestamp()
    canonical = fast.check(t, json.dumps({**base, "ts": "2026-11-27T08:00:00Z"}).encode(), now)
    assert canonical.line is not None and canonical.line.endswith(" 1795766400000000000")
    for body in ({**base, "ts": "2026-11-27T16:00:00+08:00"},                  # an offset: the full path
                 {**base, "ts": "2026-11-27T08:00:00.000Z", "src": "甲烷站"},  # non-ASCII src: the full path
                 {**base, "ts": "2026-11-27T08:00:00Z", "readings": {"ch4_pct": {"value": 0.5}}}):
        raw = json.dumps(body, ensure_ascii=False).encode()
        got = fast.check(t, raw, now)
        assert got == full.check(t, raw, now) and dataclasses.replace(got, src=None) == canonical, body
    as_int = fast.check(t, b'{"v":1,"ts":"2026-11-27T08:00:01Z","seq":8,"readings":{"ch4_pct":2}}', now)
    assert as_int.line is not None and "ch4_pct=2.0," in as_int.line


def test_out_of_range_quality_and_unknown_sensors_keep_their_meaning(catalog: Catalog) -> None:
    fast, _ = _validators(catalog)
    t = topic("yanshan_mine", "face_1203", "gas_face_1203")
    now = START.timestamp()
    flagged = fast.check(t, encode_telemetry(START, 1, {"ch4_pct": (250.0, "good")}), now)
    assert flagged.out_of_range == 1 and flagged.line is not None
    assert f'ch4_pct=250.0,ch4_pct_quality="{OUT_OF_RANGE}"' in flagged.line
    uncertain = fast.check(t, encode_telemetry(START, 1, {"ch4_pct": (0.5, "uncertain")}), now)
    assert uncertain.line is not None and 'ch4_pct=0.5,ch4_pct_quality="uncertain",seq=1i' in uncertain.line
    mixed = fast.check(t, encode_telemetry(START, 1, {"ch4_pct": 0.5, "unicorn_pct": 1.0}), now)
    assert mixed == Checked(mixed.line, 1, 0, START.timestamp(), mixed.rejection, seq=1)
    assert mixed.rejection is not None and mixed.rejection.reason == UNKNOWN_SENSOR
    assert "unicorn_pct" in mixed.rejection.detail and "the other readings were stored" in mixed.rejection.detail


def test_tiny_numbers_are_written_as_repr_writes_them(catalog: Catalog) -> None:
    """The fast path formats numbers with orjson, which writes 1e-05 as 0.00001 and 1.5e-07 as 1.5e-7: it must
    notice and write them as repr() does, like the full path."""
    fast, full = _validators(catalog)
    eq = next(e for e in catalog.all_equipment()
              if sum(1 for s in e.sensors.values() if s.spec.physical[0] <= 0 < s.spec.physical[1]) >= 2)
    sensors = [sid for sid, s in eq.sensors.items() if s.spec.physical[0] <= 0 < s.spec.physical[1]][:2]
    t = topic(eq.site, eq.area, eq.id)
    now = START.timestamp()
    for tiny in (1e-05, 1.5e-07, 9.999999999999999e-05, 5e-324, 0.0001, 0.00012, -0.0):
        payload = encode_telemetry(START, 1, {sensors[0]: tiny, sensors[1]: 0.5})
        target = fast.target(t)
        assert not isinstance(target, Rejection)
        assert fast._fast(target, payload, now) is not None, tiny
        got = fast.check(t, payload, now)
        assert got == full.check(t, payload, now)
        assert got.line is not None and f"{sensors[0]}={tiny!r}," in got.line
