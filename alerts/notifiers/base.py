"""The notifier interface and the one loop that drives every notifier.

A notifier (a channel: MQTT alert topic, webhook, e-mail, Grafana annotation, InfluxDB history) is a
small class with three methods, as in Telegraf's outputs: ``wants`` decides whether a notification is
for it, ``send`` delivers one, ``close`` lets go of connections. Queueing, retries with back-off and
failure counting live once, in :class:`Dispatcher`, not in every channel. Each notifier gets its own
worker thread and queue, so a slow SMTP server never delays the MQTT state ops look at.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from alerts.model import PAGING, Notification

log = logging.getLogger(__name__)


class NotifyError(RuntimeError):
    """Delivery failed. ``retryable`` says whether trying again may help (a 503, a refused connection)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Notifier(Protocol):
    name: str

    def wants(self, notification: Notification) -> bool:
        """Whether this channel delivers this notification (severity floor, paging only...)."""
        ...

    def send(self, notification: Notification) -> None:
        """Deliver one notification or raise :class:`NotifyError`."""
        ...

    def close(self) -> None:
        ...


def reaches_people(notification: Notification, min_severity: str) -> bool:
    """The routing rule of the channels that reach a person (webhook, e-mail).

    Paging transitions and their follow-ups (acknowledged, resolved) at or above the channel's severity
    floor, unless a silence holds the alert; a re-fire within the cooldown never pages again.
    """
    return (notification.alert.silenced_by is None and notification.at_least(min_severity)
            and notification.transition in PAGING | {"acknowledged", "resolved"})


@dataclass
class ChannelStats:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    last_error: str | None = None


_STOP = object()


@dataclass
class _Worker:
    notifier: Notifier
    queue: queue.Queue[object] = field(default_factory=queue.Queue)
    stats: ChannelStats = field(default_factory=ChannelStats)
    thread: threading.Thread | None = None


class Dispatcher:
    """Hands each notification to every notifier that wants it, with bounded retries and back-off."""

    def __init__(self, notifiers: list[Notifier], *, retry_max: int = 5, retry_backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0) -> None:
        self.retry_max = retry_max
        self.retry_backoff_s = retry_backoff_s
        self.max_backoff_s = max_backoff_s
        self._stopping = threading.Event()
        self._workers = {n.name: _Worker(n) for n in notifiers}
        for worker in self._workers.values():
            worker.thread = threading.Thread(target=self._run, args=(worker,), daemon=True,
                                             name=f"notifier-{worker.notifier.name}")
            worker.thread.start()

    @property
    def stats(self) -> dict[str, ChannelStats]:
        return {name: w.stats for name, w in self._workers.items()}

    def submit(self, notifications: list[Notification]) -> None:
        for notification in notifications:
            for worker in self._workers.values():
                if worker.notifier.wants(notification):
                    worker.queue.put(notification)

    def idle(self) -> bool:
        return all(w.queue.unfinished_tasks == 0 for w in self._workers.values())

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (within ``timeout_s``), then close every notifier."""
        deadline = time.monotonic() + timeout_s
        for worker in self._workers.values():
            worker.queue.put(_STOP)
        for worker in self._workers.values():
            assert worker.thread is not None
            worker.thread.join(max(0.0, deadline - time.monotonic()))
        self._stopping.set()  # cut short back-off sleeps of anything still retrying
        for worker in self._workers.values():
            try:
                worker.notifier.close()
            except Exception:  # closing is best effort; the delivery counts are already final
                log.exception("closing notifier %s", worker.notifier.name)

    def _run(self, worker: _Worker) -> None:
        while True:
            item = worker.queue.get()
            try:
                if item is _STOP:
                    return
                assert isinstance(item, Notification)
                self._deliver(worker, item)
            finally:
                worker.queue.task_done()

    def _deliver(self, worker: _Worker, notification: Notification) -> None:
        name, stats = worker.notifier.name, worker.stats
        delay = self.retry_backoff_s
        for attempt in range(self.retry_max + 1):
            try:
                worker.notifier.send(notification)
                stats.sent += 1
                return
            except NotifyError as exc:
                stats.last_error = str(exc)
                if not exc.retryable or attempt == self.retry_max:
                    break
                log.warning("%s: %s (retry %d/%d in %.1f s)", name, exc, attempt + 1, self.retry_max, delay)
            except Exception as exc:  # a bug in one channel must not stop the others
                stats.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("%s: unexpected error delivering alert %s", name, notification.alert.id)
                break
            stats.retried += 1
            if self._stopping.wait(delay):
                break
            delay = min(delay * 2, self.max_backoff_s)
        stats.failed += 1
        log.error("%s: gave up delivering %s of alert %s: %s", name, notification.transition,
                  notification.alert.id, stats.last_error)
