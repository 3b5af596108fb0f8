"""The alert lifecycle rules ops rely on, with a fake clock: dedup, no flapping, escalation, silences."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from alerts.engine import AlertEngine, AlertError, EngineState
from alerts.model import Notification
from smartmine.wire import AnomalyEvent

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def event(state: str = "firing", severity: str = "critical", rule: str = "limit:methane",
          equipment: str = "gas_face_1203", ch4: float = 1.2, **kw: Any) -> AnomalyEvent:
    return AnomalyEvent(ts=T0, start=T0, site="yanshan_mine", area="face_1203", equipment=equipment,
                        sensor="ch4_pct", detector="limit", rule=rule, severity=severity, state=state,
                        score=1.0, threshold=1.0, values={"ch4_pct": ch4}, message=f"CH4 {ch4} % >= 1.0 %", **kw)


def engine(**kw: Any) -> AlertEngine:
    args: dict[str, Any] = {"clear_hold_s": 30, "cooldown_s": 300, "escalate_after_s": 600}
    args.update(kw)
    return AlertEngine(**args)


def kinds(notifications: list[Notification]) -> list[str]:
    return [n.transition for n in notifications]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_one_alert_per_equipment_and_rule_while_it_fires() -> None:
    e = engine()
    assert kinds(e.on_event(event(), at(0))) == ["fired"]
    for i in range(1, 50):
        assert e.on_event(event(ch4=1.2 + i / 100), at(i)) == []  # repeats fold in, nobody is paged again
    other_rule = e.on_event(event(rule="limit:co_limit"), at(51))
    other_equipment = e.on_event(event(equipment="gas_upper_corner_1203"), at(52))
    assert kinds(other_rule) == kinds(other_equipment) == ["fired"]
    (methane,) = [a for a in e.open_alerts() if a.rule == "limit:methane" and a.equipment == "gas_face_1203"]
    assert methane.events == 50 and methane.values == {"ch4_pct": 1.69}
    assert len(e.open_alerts()) == 3
    # The MQTT state of one equipment holds all its open alerts, keyed by rule.
    assert set(other_rule[0].equipment_alerts) == {"limit:methane", "limit:co_limit"}


def test_a_value_hovering_at_its_restore_level_does_not_flap() -> None:
    e = engine(clear_hold_s=30)
    e.on_event(event(), at(0))
    out: list[Notification] = []
    for i in range(1, 41):  # analytics alternates cleared / firing every 2 s: the value hovers at the limit
        out += e.on_event(event(state="cleared" if i % 2 else "firing"), at(2 * i))
        out += e.tick(at(2 * i + 1))
    assert out == []
    assert e.open_alerts()[0].state == "firing"
    e.on_event(event(state="cleared"), at(100))
    assert e.tick(at(129)) == []
    (resolved,) = e.tick(at(130))
    assert resolved.transition == "resolved" and resolved.alert.resolved_at == at(130)
    assert resolved.equipment_alerts == {}  # the equipment's state topic becomes an explicit all-clear


def test_firing_again_within_the_cooldown_reopens_without_paging() -> None:
    e = engine(clear_hold_s=0, cooldown_s=300)
    (fired,) = e.on_event(event(), at(0))
    assert kinds(e.on_event(event(state="cleared"), at(10))) == ["resolved"]
    (again,) = e.on_event(event(), at(100))
    assert again.transition == "refired" and not again.pages
    assert again.alert.id == fired.alert.id and again.alert.refired == 1
    e.on_event(event(state="cleared"), at(110))
    (worse,) = e.on_event(event(severity="emergency"), at(120))
    assert worse.transition == "severity_raised" and worse.pages  # worse than what was paged: page again
    e.on_event(event(state="cleared"), at(130))
    (new,) = e.on_event(event(), at(130 + 301))
    assert new.transition == "fired" and new.alert.id != fired.alert.id


def test_unacknowledged_critical_escalates_once_and_acknowledged_does_not() -> None:
    e = engine(escalate_after_s=600)
    (critical,) = e.on_event(event(severity="critical"), at(0))
    (warning,) = e.on_event(event(severity="warning", rule="limit:co_limit"), at(0))
    (acked,) = e.on_event(event(severity="critical", equipment="gas_return_1203"), at(0))
    e.acknowledge(acked.alert.id, "zhang@dispatch", at(60))
    assert e.tick(at(599)) == []
    (escalated,) = e.tick(at(600))
    assert escalated.alert.id == critical.alert.id
    assert escalated.alert.escalated and escalated.alert.severity == "emergency" and escalated.pages
    assert e.tick(at(1800)) == []  # escalates once, not every tick
    assert e.get(warning.alert.id).severity == "warning"


def test_ack_lifecycle_and_clear_errors() -> None:
    e = engine(clear_hold_s=0)
    (n,) = e.on_event(event(), at(0))
    (ack,) = e.acknowledge(n.alert.id, "li@ops", at(5))
    assert ack.alert.state == "acknowledged" and ack.alert.acknowledged_by == "li@ops" and not ack.pages
    with pytest.raises(AlertError, match="already acknowledged by li@ops"):
        e.acknowledge(n.alert.id, "wang@ops", at(6))
    with pytest.raises(AlertError, match="no alert with id '999'"):
        e.acknowledge("999", "wang@ops", at(6))
    e.on_event(event(state="cleared"), at(10))
    with pytest.raises(AlertError, match="already resolved"):
        e.acknowledge(n.alert.id, "wang@ops", at(11))
    # A worse condition after the ack needs a fresh acknowledgement.
    (m,) = e.on_event(event(equipment="gas_return_1203", severity="warning"), at(20))
    e.acknowledge(m.alert.id, "li@ops", at(21))
    (raised,) = e.on_event(event(equipment="gas_return_1203", severity="critical"), at(22))
    assert raised.alert.state == "firing" and raised.pages


def test_silences_hold_back_paging_but_never_an_emergency() -> None:
    e = engine(escalate_after_s=10**6)
    silence = e.add_silence(site="yanshan_mine", equipment=None, rule="limit:*", duration_s=3600,
                            reason="sensor calibration", by="li@ops", now=at(0))
    (held,) = e.on_event(event(severity="critical"), at(10))
    assert held.alert.silenced_by == silence.id and not held.pages
    (emergency,) = e.on_event(event(severity="emergency", equipment="gas_upper_corner_1203"), at(10))
    assert emergency.alert.silenced_by is None and emergency.pages  # methane power-off always reaches a person
    (other,) = e.on_event(event(rule="ewma:ch4_pct"), at(10))
    assert other.pages  # pattern limit:* does not match
    with pytest.raises(AlertError, match="refusing to silence everything"):
        e.add_silence(site=None, equipment=None, rule="*", duration_s=60, reason="x", by="li@ops", now=at(0))
    # When the silence expires while the alert still fires, it pages then.
    released = e.tick(at(3600))
    assert [(n.transition, n.alert.id, n.pages) for n in released] == [("unsilenced", held.alert.id, True)]
    assert e.silences == {}


def test_state_survives_a_restart() -> None:
    e = engine()
    (n,) = e.on_event(event(), at(0))
    e.acknowledge(n.alert.id, "li@ops", at(1))
    e.add_silence(site=None, equipment="belt_main_1", rule="*", duration_s=60, reason="belt change", by="li@ops",
                  now=at(1))
    restored = engine(state=EngineState.model_validate_json(e.state().model_dump_json()))
    assert restored.get(n.alert.id).state == "acknowledged"
    assert list(restored.silences) == list(e.silences)
    assert restored.on_event(event(), at(2)) == []  # still deduplicated against the restored alert
    (new,) = restored.on_event(event(equipment="belt_main_1", rule="limit:x"), at(3))
    assert int(new.alert.id) > int(n.alert.id) and new.alert.silenced_by is not None


def test_resolved_alerts_are_kept_for_the_record_but_bounded() -> None:
    from alerts.engine import KEEP_RESOLVED

    e = engine(clear_hold_s=0, cooldown_s=0)
    for i in range(KEEP_RESOLVED + 20):
        e.on_event(event(equipment=f"gas_point_{i}"), at(i))
        e.on_event(event(equipment=f"gas_point_{i}", state="cleared"), at(i))
    e.on_event(event(equipment="gas_face_1203"), at(10_000))
    assert len(e.alerts) == KEEP_RESOLVED + 1
    assert "1" not in e.alerts and str(KEEP_RESOLVED + 20) in e.alerts  # the oldest go first
    assert len(e.open_alerts()) == 1
