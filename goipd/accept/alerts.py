"""Alertmanager → SMS: parse a webhook notification, render it as one short SMS, and decide who
gets it (de-duplication by groupKey + status, a rate limit per phone number).

Parsing and rendering are pure. The de-duplication lives in the ledger (`AlertPages`, table
alert_pages): a restart, or another instance on the same ledger, does not page again within
the window. Pages are forgotten once older than the window, and beyond the newest
pages_sqlite.MAX_PAGES. The rate limit is kept in each instance's memory: a restart forgets it,
and instances behind a load balancer each allow `max_messages` per number.
The HTTP handler (web/alertmanager.py) hands the rendered text to the API's own accept path, so
an alert SMS is a normal durable message with normal routing.
"""

from __future__ import annotations

import contextlib
import re
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import structlog
from pydantic import ValidationError

from goipd.accept.requests import AlertmanagerRequest, first_error, value_at
from goipd.config import (
    AlertingSettings,
    AlertRateLimitSettings,
    AlertReceiverSettings,
    RouteTarget,
)
from goipd.ledger.base import AlertPages
from goipd.ledger.pages_sqlite import UNRECORDED_PAGE_KEEP
from goipd.metrics.catalog import Metrics
from goipd.model import LedgerError
from goipd.problem import json_kind
from goipd.upstream import segments

log = structlog.get_logger("goipd.accept.alerts")

Status = Literal["firing", "resolved"]
Outcome = Literal["sent", "deduplicated", "rate_limited", "failed", "unknown_receiver", "malformed"]
RECEIVER_OUTCOMES: Final[tuple[Outcome, ...]] = ("sent", "deduplicated", "rate_limited", "failed")
REQUEST_OUTCOMES: Final[tuple[Outcome, ...]] = ("unknown_receiver", "malformed")
"""Counted with receiver="": names nobody configured must not create series."""

# Labels that say where an alert was evaluated or how it is routed, not what is broken; shown
# only when the notification is grouped by them.
BACKGROUND_LABELS: Final = frozenset(
    # goipd_runbook_base: an external label for runbook links (docs/metrics-and-alerts.md).
    {"alertname", "severity", "job", "instance", "prometheus", "goipd_runbook_base"}
)
LABEL_VALUE_CHARS: Final = 32
MIN_SUMMARY_CHARS: Final = 40
"""Labels are dropped (last first) rather than cut the summary shorter than this."""
_BLANKS = re.compile(r"[\s\x00-\x1f\x7f]+")
_SURROGATES = re.compile(r"[\ud800-\udfff]")


class NotificationError(ValueError):
    """The body is not an Alertmanager webhook notification; the message names the field."""


# --- parsing ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alert:
    status: Status
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Notification:
    receiver: str
    status: Status
    group_key: str
    alerts: tuple[Alert, ...]
    group_labels: Mapping[str, str]
    common_labels: Mapping[str, str]
    common_annotations: Mapping[str, str]
    truncated_alerts: int


def _safe(text: str, limit: int = 40) -> str:
    """A payload string as it may appear in an error detail or a log: short, encodable."""
    return _SURROGATES.sub("\ufffd", text[:limit])


def parse_notification(body: Any) -> Notification:
    """Alertmanager's webhook payload, version 4, as AlertmanagerRequest (accept/requests.py)
    declares it. Fields goipd does not use are not checked beyond their type, and unknown
    fields are ignored: a newer Alertmanager may add some."""
    try:
        request = AlertmanagerRequest.model_validate(body)
    except ValidationError as exc:
        raise _refusal(exc, body) from None
    return Notification(
        receiver=request.receiver,
        status=request.status,
        group_key=request.group_key,
        alerts=tuple(
            Alert(
                status=alert.status,
                labels=alert.labels or {},
                annotations=alert.annotations or {},
                fingerprint=alert.fingerprint or "",
            )
            for alert in request.alerts
        ),
        group_labels=request.group_labels or {},
        common_labels=request.common_labels or {},
        common_annotations=request.common_annotations or {},
        truncated_alerts=request.truncated_alerts or 0,
    )


_STRING_MAPS = frozenset(
    {"labels", "annotations", "groupLabels", "commonLabels", "commonAnnotations"}
)


def _refusal(exc: ValidationError, body: Any) -> NotificationError:
    """The model's first error in the words this receiver has always used."""
    if not isinstance(body, dict):
        return NotificationError(f"expected a JSON object, got {json_kind(body)}")
    error = first_error(exc)
    loc = error["loc"]
    # The field is the top-level one, or an alert's own: ("alerts", 0, "labels"). What follows
    # it is a key of a string map.
    depth = 3 if loc[0] == "alerts" and len(loc) >= 3 else 1
    field = str(loc[depth - 1])
    where = "".join(
        f"[{part}]" if isinstance(part, int) else f".{_safe(part)}" for part in loc
    ).lstrip(".")
    value = value_at(body, loc)
    kind = json_kind(value)
    shown = f"{_safe(value)!r}" if isinstance(value, str) else kind
    if len(loc) > depth:
        if field == "alerts":
            return NotificationError(f"{where}: expected an object, got {kind}")
        return NotificationError(f"{where}: expected a string, got {kind}")
    if field == "version":
        return NotificationError(
            f'version: expected "4" (Alertmanager webhook payload version 4), got {shown}'
        )
    if field == "status":
        return NotificationError(f'{where}: expected "firing" or "resolved", got {shown}')
    if field == "alerts":
        got = "an empty one" if isinstance(value, list) else kind
        return NotificationError(f"alerts: expected a non-empty array of alerts, got {got}")
    if field == "truncatedAlerts":
        return NotificationError("truncatedAlerts: expected an integer >= 0")
    if field in _STRING_MAPS:
        if error["type"] == "missing":
            return NotificationError(f"{where}: required")
        return NotificationError(f"{where}: expected an object of strings, got {kind}")
    if error["type"] == "string_too_short":
        return NotificationError(f"{where}: must not be empty")
    return NotificationError(f"{where}: expected a string, got {kind}")


# --- rendering ----------------------------------------------------------------------------------


def _clean(text: str) -> str:
    """One line: an SMS has no room for layout, and the API refuses control characters."""
    return _BLANKS.sub(" ", _SURROGATES.sub("\ufffd", text)).strip()


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    ellipsis = _ellipsis(text)
    return text[: limit - len(ellipsis)] + ellipsis


def _ellipsis(text: str) -> str:
    # "…" is not in the GSM 7-bit alphabet: in a GSM-7 text it would make the whole SMS UCS-2
    # and cut its capacity by more than half.
    return "..." if segments.is_gsm7(text) else "…"


@dataclass(frozen=True, slots=True)
class _Parts:
    head: str
    labels: tuple[str, ...]
    tail: str

    def compose(self, label_count: int, summary: str) -> str:
        text = " ".join((self.head, *self.labels[:label_count]))
        if summary:
            text += f": {summary}"
        return text + self.tail


def _parts(notification: Notification) -> tuple[_Parts, str]:
    status = notification.status
    matching = [a for a in notification.alerts if a.status == status]
    primary = matching[0] if matching else notification.alerts[0]
    count = len(matching or notification.alerts) + notification.truncated_alerts
    alertname = (
        primary.labels.get("alertname") or notification.common_labels.get("alertname") or "alert"
    )
    names = [n for n in notification.group_labels if n != "alertname" and n in primary.labels]
    names += sorted(n for n in primary.labels if n not in BACKGROUND_LABELS and n not in names)
    labels = tuple(
        f"{_clean(name)}={_shorten(_clean(primary.labels[name]), LABEL_VALUE_CHARS)}"
        for name in names
    )
    summary = (
        primary.annotations.get("summary")
        or notification.common_annotations.get("summary")
        or primary.annotations.get("description")
        or notification.common_annotations.get("description")
        or ""
    )
    head = f"[{status.upper()}:{count}] {_clean(alertname)}"
    tail = f" (+{count - 1} more)" if count > 1 else ""
    return _Parts(head, labels, tail), _clean(summary)


def render(notification: Notification, max_segments: int, max_chars: int) -> str:
    """One SMS for the whole notification, e.g.
    `[FIRING:2] GoipdSimDead line=G101 server=hq: SIM of line hq/G101 not registered (+1 more)`,
    at most `max_segments` SMS and `max_chars` characters long."""

    def fits(text: str) -> bool:
        return len(text) <= max_chars and segments.analyse(text).segments <= max_segments

    parts, summary = _parts(notification)

    def summary_fits(label_count: int) -> Callable[[int], bool]:
        return lambda keep: fits(_cut(parts, label_count, summary, keep))

    for count in range(len(parts.labels), -1, -1):
        text = parts.compose(count, summary)
        if fits(text):
            return text
        kept = _longest(len(summary), summary_fits(count))
        if kept is not None and (kept >= MIN_SUMMARY_CHARS or count == 0):
            return _cut(parts, count, summary, kept)
    # Not even the alert name fits: cut the text itself.
    whole = parts.compose(0, "")
    kept = _longest(len(whole), lambda n: fits(_trimmed(whole, n)))
    return _trimmed(whole, kept) if kept is not None else whole[:max_chars]


def _cut(parts: _Parts, label_count: int, summary: str, keep: int) -> str:
    return parts.compose(label_count, _trimmed(summary, keep) if keep else "")


def _trimmed(text: str, keep: int) -> str:
    head = text[:keep].rstrip()
    return head + _ellipsis(head)


def _longest(size: int, fits: Callable[[int], bool]) -> int | None:
    """Largest n in 1..size-1 with fits(n), by bisection (fits is monotonic but for
    encoding switches, where any answer it gives still fits); None when even 1 does not."""
    low, high = 0, size - 1
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low if low >= 1 and fits(low) else None


# --- who gets it --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Admission:
    key: tuple[str, str, str]
    at: float
    allowed: tuple[str, ...]
    """Numbers to send to; their sends are already counted against the rate limit."""
    limited: tuple[str, ...]
    """Numbers over the rate limit: they get nothing."""
    duplicate_of: str | None = None
    """Set when the same groupKey and status was sent within the window (the message id, or ""
    while that message is still being stored)."""
    claimed: bool = False
    """The page is claimed in the ledger (stamped `at`) for this admission."""


class RateLimit:
    """A sliding-window limit per number, in this instance's memory (each instance behind a
    load balancer keeps its own). Bounded by the configured numbers, `max_messages` each."""

    def __init__(self) -> None:
        self._sends: dict[str, deque[float]] = {}

    def take(
        self, numbers: Sequence[str], now: float, limit: AlertRateLimitSettings
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(allowed, limited): the allowed numbers' sends are counted at `now`."""
        allowed: list[str] = []
        limited: list[str] = []
        for number in numbers:
            sends = self._sends.setdefault(number, deque())
            while sends and sends[0] <= now - limit.per:
                sends.popleft()
            (allowed if len(sends) < limit.max_messages else limited).append(number)
        for number in allowed:
            self._sends[number].append(now)
        return tuple(allowed), tuple(limited)

    def give_back(self, numbers: Sequence[str], at: float) -> None:
        for number in numbers:
            with contextlib.suppress(ValueError, KeyError):
                self._sends[number].remove(at)


class AlertGate:
    """De-duplication by (receiver, groupKey, status) in the ledger, so neither a restart nor
    another instance on the same ledger pages again within the window, and the rate limit per
    number. The caller passes `now`, wall-clock seconds (the ledger compares it across
    processes)."""

    def __init__(self, pages: AlertPages) -> None:
        self.pages = pages
        self.rate_limit = RateLimit()

    async def admit(
        self,
        key: tuple[str, str, str],
        numbers: Sequence[str],
        now: float,
        settings: AlertingSettings,
    ) -> Admission:
        """Decides and reserves: an admission with numbers allowed must be `commit`ted or
        `release`d. The duplicate check and the claim of the page are one step in the ledger:
        of instances admitting the same notification at once, one sends."""
        window = settings.dedup_window
        claimed = False
        if window > 0:
            duplicate_of = await self.pages.claim_alert_page(*key, now, window)
            if duplicate_of is not None:
                return Admission(key, now, (), (), duplicate_of=duplicate_of)
            claimed = True
        allowed, limited = self.rate_limit.take(numbers, now, settings.rate_limit)
        admission = Admission(key, now, allowed, limited, claimed=claimed)
        if claimed and not allowed:
            # Nothing goes out: the same notification later is not a duplicate of this one.
            await self._unclaim(admission)
        return admission

    async def commit(self, admission: Admission, message_id: str) -> None:
        if not admission.claimed:
            return
        try:
            await self.pages.record_alert_page(*admission.key, admission.at, message_id)
        except LedgerError as exc:
            # The SMS is stored and goes out. Its claim stays without the id: repeats within
            # UNRECORDED_PAGE_KEEP are deduplicated, later ones page again.
            log.warning(
                "alert_page_unrecorded",
                receiver=admission.key[0],
                message_id=message_id,
                reason=str(exc),
                holds_for=UNRECORDED_PAGE_KEEP,
            )

    async def release(self, admission: Admission) -> None:
        """The message could not be stored: as if it had never been admitted."""
        self.rate_limit.give_back(admission.allowed, admission.at)
        if admission.claimed:
            await self._unclaim(admission)

    async def _unclaim(self, admission: Admission) -> None:
        try:
            await self.pages.release_alert_page(*admission.key, admission.at)
        except LedgerError as exc:
            log.warning(
                "alert_page_unreleased",
                receiver=admission.key[0],
                reason=str(exc),
                holds_for=UNRECORDED_PAGE_KEEP,
            )


# --- the relay ----------------------------------------------------------------------------------

Submit = Callable[[Sequence[str], str, RouteTarget | None], Awaitable[str]]
"""Stores one message through the API's accept path: (numbers, text, route) → message id."""


def _masked(number: str) -> str:
    return number[:4] + "…" + number[-3:]


class AlertRelay:
    """The receiver's state: settings (swapped on reload), the gate, and its metrics."""

    def __init__(self, settings: AlertingSettings, metrics: Metrics, pages: AlertPages) -> None:
        self.settings = AlertingSettings()
        self.metrics = metrics
        self.gate = AlertGate(pages)
        for outcome in REQUEST_OUTCOMES:
            metrics.alert_notifications.labels("", outcome)
        self.configure(settings)

    def configure(self, settings: AlertingSettings) -> None:
        """Start every configured receiver's counters at 0 (so rate() works from the first
        page) and drop the series of receivers no longer configured."""
        for name in set(self.settings.receivers) - set(settings.receivers):
            for outcome in RECEIVER_OUTCOMES:
                with contextlib.suppress(KeyError):
                    self.metrics.alert_notifications.remove(name, outcome)
            with contextlib.suppress(KeyError):
                self.metrics.alert_recipients_rate_limited.remove(name)
        for name in settings.receivers:
            for outcome in RECEIVER_OUTCOMES:
                self.metrics.alert_notifications.labels(name, outcome)
            self.metrics.alert_recipients_rate_limited.labels(name)
        self.settings = settings

    def receiver(self, name: str) -> AlertReceiverSettings | None:
        return self.settings.receivers.get(name)

    def count(self, outcome: Outcome, receiver: str = "") -> None:
        self.metrics.alert_notifications.labels(receiver, outcome).inc()

    def unknown_receiver(self, name: str) -> None:
        # Logged because the two configs disagree: someone must add the receiver to goipd or
        # fix Alertmanager's, and the metric deliberately does not carry the name.
        self.count("unknown_receiver")
        log.warning(
            "alert_receiver_unknown",
            receiver=_safe(name, 64),
            configured=sorted(self.settings.receivers),
        )

    async def deliver(
        self,
        notification: Notification,
        receiver: AlertReceiverSettings,
        text: str,
        now: float,
        submit: Submit,
    ) -> dict[str, Any]:
        """Sends `text` (the rendered notification) to the receiver's numbers that are neither
        deduplicated nor over their rate limit; the reply is the JSON answer. `now` is
        wall-clock seconds."""
        name = notification.receiver
        key = (name, notification.group_key, notification.status)
        try:
            admission = await self.gate.admit(key, receiver.to, now, self.settings)
        except BaseException:
            # The ledger could not say whether it was paged (503): Alertmanager retries.
            self.count("failed", name)
            raise
        reply: dict[str, Any] = {
            "receiver": name,
            "status": notification.status,
            "message_id": None,
        }
        if admission.duplicate_of is not None:
            self.count("deduplicated", name)
            log.info(
                "alert_deduplicated",
                receiver=name,
                status=notification.status,
                group_key=_safe(notification.group_key, 200),
                duplicate_of=admission.duplicate_of or None,
            )
            reply |= {
                "outcome": "deduplicated",
                "duplicate_of": admission.duplicate_of or None,
                "recipients": dict.fromkeys(receiver.to, "deduplicated"),
            }
            return reply
        if admission.limited:
            self.metrics.alert_recipients_rate_limited.labels(name).inc(len(admission.limited))
            log.warning(
                "alert_rate_limited",
                receiver=name,
                status=notification.status,
                recipients=[_masked(n) for n in admission.limited],
                max_messages=self.settings.rate_limit.max_messages,
                per_seconds=self.settings.rate_limit.per,
            )
        recipients = dict.fromkeys(admission.limited, "rate_limited")
        if not admission.allowed:
            self.count("rate_limited", name)
            return reply | {"outcome": "rate_limited", "recipients": recipients}
        try:
            message_id = await submit(admission.allowed, text, receiver.route)
        except BaseException:
            self.count("failed", name)
            await self.gate.release(admission)
            raise
        await self.gate.commit(admission, message_id)
        self.count("sent", name)
        log.info(
            "alert_relayed",
            receiver=name,
            status=notification.status,
            alerts=len(notification.alerts),
            message_id=message_id,
            recipients=len(admission.allowed),
        )
        recipients |= dict.fromkeys(admission.allowed, "sent")
        return reply | {
            "outcome": "sent",
            "message_id": message_id,
            "recipients": {n: recipients[n] for n in receiver.to},
        }
