"""The Grafana channel across a restart of the alerts service: the region opened before it is closed after it.

Grafana cannot run on this machine; the channel talks to ``grafana_api.GrafanaRecorder``, which answers the
annotations endpoints the way Grafana's HTTP API reference documents them and records any request that does
not follow it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from grafana_api import GrafanaRecorder
from grafana_client import GrafanaApi

from alerts.model import Alert, Notification
from alerts.notifiers.grafana import GrafanaAnnotationNotifier

FIRED = datetime(2026, 11, 27, 8, 0, 0, 250_000, tzinfo=UTC)


@pytest.fixture
def grafana() -> Iterator[GrafanaRecorder]:
    recorder = GrafanaRecorder().start()
    yield recorder
    recorder.stop()


def _notifier(grafana: GrafanaRecorder) -> GrafanaAnnotationNotifier:
    return GrafanaAnnotationNotifier(GrafanaApi.from_url(grafana.url, credential="test-token"))


def _alert(alert_id: str, equipment: str, fired: datetime) -> Alert:
    return Alert(id=alert_id, site="yanshan_mine", area="face_1203", equipment=equipment, rule="limit:methane",
                 sensor="ch4_pct", detector="limit", severity="critical", message="CH4 1.6 %vol at the coal face",
                 started=fired, fired_at=fired, last_event_at=fired)


def test_a_restarted_service_closes_the_region_it_opened_before(grafana: GrafanaRecorder) -> None:
    methane = _alert("1", "gas_face_1203", FIRED)
    other = _alert("2", "gas_upper_corner_1203", FIRED)
    before = _notifier(grafana)
    before.send(Notification(transition="fired", alert=methane, at=FIRED))
    before.send(Notification(transition="fired", alert=other, at=FIRED))
    # The service restarts: a new notifier with nothing in memory; ids restart from 1 as well.
    after = _notifier(grafana)
    escalated = methane.model_copy(update={"severity": "emergency", "escalated": True})
    after.send(Notification(transition="escalated", alert=escalated, at=FIRED + timedelta(minutes=5)))
    after.send(Notification(transition="resolved", alert=escalated, at=FIRED + timedelta(minutes=9)))

    assert grafana.problems == []
    assert len(grafana.annotations) == 2  # no second mark for the methane alert
    regions = {a["tags"][3]: a for a in grafana.annotations.values()}
    fired_ms = int(FIRED.timestamp() * 1000)
    assert regions["gas_face_1203"]["time"] == fired_ms
    assert regions["gas_face_1203"]["timeEnd"] == fired_ms + 9 * 60_000
    assert regions["gas_face_1203"]["tags"][-1] == "emergency"
    assert regions["gas_upper_corner_1203"].get("timeEnd") is None  # the other alert's mark is untouched


def test_a_resolve_with_no_annotation_to_find_marks_the_whole_region(grafana: GrafanaRecorder) -> None:
    methane = _alert("7", "gas_face_1203", FIRED)
    _notifier(grafana).send(Notification(transition="resolved", alert=methane, at=FIRED + timedelta(minutes=3)))
    assert grafana.problems == []
    [region] = grafana.annotations.values()
    assert region["timeEnd"] - region["time"] == 3 * 60_000
