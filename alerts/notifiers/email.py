"""E-mail channel: one plain-text message per paging notification, over SMTP (STARTTLS and login optional)."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from alerts.model import Notification
from alerts.notifiers.base import NotifyError, reaches_people


def email_text(notification: Notification) -> str:
    a = notification.alert
    lines = [notification.subject(), "",
             f"site / area / equipment: {a.site} / {a.area} / {a.equipment}",
             f"rule: {a.rule}   detector: {a.detector}   sensor: {a.sensor or '-'}",
             f"severity: {a.severity}{' (escalated)' if a.escalated else ''}   state: {a.state}",
             f"started: {a.started.isoformat()}   fired: {a.fired_at.isoformat()}"]
    if a.values:
        lines.append("values: " + ", ".join(f"{k}={v:g}" for k, v in a.values.items()))
    if a.threshold is not None:
        lines.append(f"threshold: {a.threshold:g}")
    if a.acknowledged_by:
        lines.append(f"acknowledged by {a.acknowledged_by} at {a.acknowledged_at}")
    lines += ["", f"Acknowledge: smartmine alerts ack {a.id}"]
    return "\n".join(lines) + "\n"


class EmailNotifier:
    name = "email"

    def __init__(self, host: str, port: int, sender: str, recipients: list[str], *, starttls: bool = False,
                 user: str | None = None, password: str | None = None, min_severity: str = "critical",
                 timeout_s: float = 10.0) -> None:
        self.host, self.port, self.sender, self.recipients = host, port, sender, recipients
        self.starttls, self.user, self._password = starttls, user, password
        self.min_severity, self.timeout_s = min_severity, timeout_s

    def wants(self, notification: Notification) -> bool:
        return bool(self.recipients) and reaches_people(notification, self.min_severity)

    def send(self, notification: Notification) -> None:
        msg = EmailMessage()
        msg["Subject"] = notification.subject()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain="smartmine")
        msg["X-Smartmine-Alert"] = notification.alert.id
        msg.set_content(email_text(notification))
        # One connection per message: alerts are rare, and a long-lived SMTP session would time out anyway.
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                if self.starttls:
                    smtp.starttls()
                if self.user:
                    smtp.login(self.user, self._password or "")
                smtp.send_message(msg)
        except smtplib.SMTPResponseException as exc:
            # 4xx is temporary by SMTP's own definition; 5xx (bad recipient, auth refused) is not.
            raise NotifyError(f"SMTP {self.host}:{self.port}: {exc.smtp_code} {exc.smtp_error!r}",
                              retryable=400 <= exc.smtp_code < 500) from None
        except (TimeoutError, OSError, smtplib.SMTPException) as exc:
            raise NotifyError(f"SMTP {self.host}:{self.port}: {exc}") from None

    def close(self) -> None:
        pass
