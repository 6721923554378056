"""When an alert fires, and what its webhook body says. Pure: levels and times in, decisions and bytes out.

An alert fires once per crossing: when a watched condition goes from false to true (a key disabled, the
5-hour window at 80 %), not on every observation while it stays true. It re-arms when the condition goes
false again. A hold-down keeps a flapping condition from paging again and again: after an alert on a
subject, another of the same kind on it within `hold_down_s` is suppressed (Alertmanager's
`repeat_interval`, in spirit).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

EventKind = Literal[
    "credential_disabled",
    "credential_recovered",
    "quota_threshold",
    "window_rejected",
    "budget_share",
    "cache_miss_burst",
    "rows_in_memory",
]
EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)
WebhookFormat = Literal["json", "slack"]


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One alert to deliver. `dedup` names the crossing: two processes (or a restart) that see the same
    crossing produce the same `dedup`, and the alerts table lets only one of them deliver it."""

    kind: EventKind
    subject: str
    message: str
    at: float
    dedup: str
    details: Mapping[str, Any] = field(default_factory=dict)


class Crossings:
    """Edge detection with hold-down, per (kind, subject). Not thread-safe: one owner thread."""

    def __init__(self, hold_down_s: float) -> None:
        if hold_down_s < 0:
            raise ValueError(f"hold_down_s cannot be negative (got {hold_down_s})")
        self.hold_down_s = hold_down_s
        self._active: dict[tuple[str, str], bool] = {}
        self._fired_at: dict[tuple[str, str], float] = {}

    def update(self, kind: str, subject: str, active: bool, now: float) -> bool:
        """Record the condition's current truth; True when this observation is a crossing to alert on.

        The first observation of a true condition counts as a crossing (nothing said it was true before)."""
        key = (kind, subject)
        was = self._active.get(key, False)
        self._active[key] = active
        if not active or was:
            return False
        last = self._fired_at.get(key)
        if last is not None and now - last < self.hold_down_s:
            return False
        self._fired_at[key] = now
        return True

    def is_active(self, kind: str, subject: str) -> bool:
        return self._active.get((kind, subject), False)


class Burst:
    """Counts events in a sliding window: `crossed()` says the count reached `count` within `window_s`.

    Keeps at most `count` timestamps per subject, and at most `max_subjects` subjects (the oldest is
    forgotten first): memory stays bounded whatever clients do.
    """

    def __init__(self, count: int, window_s: float, max_subjects: int = 1024) -> None:
        if count < 1 or window_s <= 0:
            raise ValueError(f"a burst needs count >= 1 and window_s > 0 (got {count}, {window_s})")
        self.count = count
        self.window_s = window_s
        self.max_subjects = max_subjects
        self._seen: dict[str, deque[float]] = {}

    def add(self, subject: str, at: float) -> bool:
        """Count one event; True while `count` of them fall within the window ending at `at`."""
        times = self._seen.pop(subject, None)
        if times is None:
            times = deque(maxlen=self.count)
            while len(self._seen) >= self.max_subjects:
                del self._seen[next(iter(self._seen))]
        self._seen[subject] = times  # most recently used last
        times.append(at)
        return len(times) == self.count and at - times[0] <= self.window_s


def window_reset_key(reset_at: datetime | None) -> str:
    """What makes two crossings of one quota window different crossings: the window's reset time."""
    return reset_at.astimezone(UTC).isoformat(timespec="seconds") if reset_at is not None else "-"


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def webhook_body(event: AlertEvent, fmt: WebhookFormat) -> bytes:
    """The POST body: generic JSON, or Slack's incoming-webhook shape (`{"text": ...}`), which Mattermost,
    Discord's `/slack` endpoint and Rocket.Chat accept too."""
    if fmt == "slack":
        return json.dumps({"text": f":rotating_light: sluice: {event.message}"}).encode()
    body = {
        "source": "sluice",
        "event": event.kind,
        "subject": event.subject,
        "message": event.message,
        "at": _when(event.at),
        "details": dict(event.details),
    }
    return json.dumps(body, default=str).encode()
