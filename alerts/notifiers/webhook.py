"""Webhook channel: a JSON POST per notification, signed with HMAC-SHA256 so the receiver can trust it.

Headers: ``X-Smartmine-Timestamp`` (Unix seconds) and ``X-Smartmine-Signature: sha256=<hex>``, the
HMAC of ``"<timestamp>.<body>"`` under the shared secret (``SMARTMINE_ALERTS__WEBHOOK_SECRET``). Signing
the timestamp with the body lets a receiver refuse a replayed old request. Retries are the dispatcher's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import urllib3

from alerts.model import Notification
from alerts.notifiers.base import NotifyError, reaches_people
from smartmine.config import redact_url

SIGNATURE_HEADER = "X-Smartmine-Signature"
TIMESTAMP_HEADER = "X-Smartmine-Timestamp"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def webhook_body(notification: Notification) -> bytes:
    body = {"v": 1, "transition": notification.transition, "at": notification.at.isoformat(),
            "subject": notification.subject(), "alert": notification.alert.model_dump(mode="json")}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class WebhookNotifier:
    name = "webhook"

    def __init__(self, url: str, secret: str, *, min_severity: str = "warning", timeout_s: float = 5.0) -> None:
        self.url = url
        self._secret = secret.encode()
        self.min_severity = min_severity
        # No hidden retries in urllib3: the dispatcher retries with back-off and counts them.
        self._http = urllib3.PoolManager(timeout=urllib3.Timeout(total=timeout_s), retries=False)

    def wants(self, notification: Notification) -> bool:
        return reaches_people(notification, self.min_severity)

    def send(self, notification: Notification) -> None:
        body = webhook_body(notification)
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json; charset=utf-8", TIMESTAMP_HEADER: ts,
                   SIGNATURE_HEADER: sign(self._secret, ts, body), "User-Agent": "smartmine-alerts"}
        try:
            resp = self._http.request("POST", self.url, body=body, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            raise NotifyError(f"POST {redact_url(self.url)}: {exc}") from None
        if resp.status >= 300:
            # 408/429 and 5xx are the receiver's trouble and may pass; other 4xx will fail the same way again.
            retryable = resp.status in (408, 429) or resp.status >= 500
            raise NotifyError(f"POST {redact_url(self.url)}: HTTP {resp.status} {resp.data[:200]!r}",
                              retryable=retryable)

    def close(self) -> None:
        self._http.clear()
