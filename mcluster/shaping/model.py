"""Typed inputs and results of shaping: outcome reports, actions, AIMD and warm-up states.

Every public call of the shaping service returns one of these (never a bare dict); each has
``to_json`` for the HTTP API and the console's ``--json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mcluster.errors import InvalidValue

OutcomeEvent = Literal["delivery", "transfail", "permfail"]
#: What a matched rule did with one report (see lua_scripts/shaping_outcome.lua).
FireStatus = Literal["fired", "active", "counted"]


class ShapingError(InvalidValue):
    """A bad shaping request: a malformed outcome report, an unknown rule or destination."""


@dataclass(frozen=True)
class Outcome:
    """One delivery attempt's result, as the MTA saw it."""

    binding: str
    domain: str
    code: int
    text: str = ""
    host: str | None = None

    @property
    def event(self) -> OutcomeEvent:
        """2xx delivered, 4xx a transient failure, 5xx a permanent one."""
        if 200 <= self.code < 300:
            return "delivery"
        return "transfail" if self.code < 500 else "permfail"

    @property
    def reply(self) -> str:
        """The reply as rules see it: ``"421 4.7.0 [TS03] ..."``."""
        return f"{self.code} {self.text}".strip()

    @staticmethod
    def from_json(body: Any) -> Outcome:
        """Validate a ``POST /v1/outbound/outcome`` body; ShapingError names the problem."""
        if not isinstance(body, dict):
            raise ShapingError('body must be a JSON object {"binding", "domain", "code", ...}')
        unknown = set(body) - {"binding", "domain", "host", "code", "text"}
        if unknown:
            raise ShapingError(f"unknown field(s): {', '.join(sorted(unknown))}")
        for key in ("binding", "domain"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise ShapingError(f"{key} must be a non-empty string")
        for key in ("host", "text"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise ShapingError(f"{key} must be a string")
        code = body.get("code")
        if isinstance(code, str) and code.isdigit():
            code = int(code)
        if type(code) is not int:
            raise ShapingError(f"code must be an SMTP reply code such as 421, got {code!r}")
        return Outcome(
            body["binding"], body["domain"], code, body.get("text") or "", body.get("host") or None
        ).checked()

    def checked(self) -> Outcome:
        if not 200 <= self.code <= 599:
            raise ShapingError(f"code must be an SMTP reply code 200-599, got {self.code}")
        for key in ("binding", "domain", "host"):
            value = getattr(self, key)
            if value is not None and (len(value) > 255 or not value.isprintable() or not value):
                raise ShapingError(f"{key} must be 1-255 printable characters")
        if len(self.text) > 4096:
            raise ShapingError("text must be at most 4096 characters")
        return self


@dataclass(frozen=True)
class RuleFiring:
    """What one rule whose pattern matched did: fired now, already active, or counted
    toward its trigger (``matches`` in the window so far)."""

    rule: str
    destination: str
    action: str
    status: FireStatus
    expires_ms: int
    matches: int

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "destination": self.destination,
            "action": self.action,
            "status": self.status,
            "expires_ms": self.expires_ms,
            "matches": self.matches,
        }


@dataclass(frozen=True)
class OutcomeResult:
    """What recording one outcome did."""

    event: OutcomeEvent
    counted: bool  # in the delivery/transfail/permfail audit metrics (when configured)
    provider: str | None
    rules: tuple[RuleFiring, ...]

    @property
    def fired(self) -> tuple[RuleFiring, ...]:
        return tuple(r for r in self.rules if r.status == "fired")

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "counted": self.counted,
            "provider": self.provider,
            "rules": [r.to_json() for r in self.rules],
        }


@dataclass(frozen=True)
class ActiveAction:
    """An action in force now, cluster-wide."""

    rule: str
    destination: str
    action: str
    value: str
    remaining_ms: int
    expires_ms: int

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "destination": self.destination,
            "action": self.action,
            "value": self.value,
            "remaining_s": round(self.remaining_ms / 1000, 3),
            "expires_ms": self.expires_ms,
        }


@dataclass(frozen=True)
class AdaptiveState:
    """An AIMD destination: its current rate (count per ``period`` s) and last ratio."""

    name: str
    destination: str
    rate: float
    period: float
    min: float
    max: float
    transfail_ratio: float | None
    stepped_ms: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "destination": self.destination,
            "rate": self.rate,
            "period": self.period,
            "min": self.min,
            "max": self.max,
            "transfail_ratio": self.transfail_ratio,
            "stepped_ms": self.stepped_ms,
        }


@dataclass(frozen=True)
class WarmupState:
    """A warm-up: its binding, the day it is on (None before first use) and that day's
    rate (None when warm)."""

    name: str
    binding: str
    day: int | None
    rate: str | None
    start_ms: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "binding": self.binding,
            "day": self.day,
            "rate": self.rate,
            "start_ms": self.start_ms,
        }


@dataclass(frozen=True)
class ShapingState:
    """``shaping show``: what is in force now."""

    now_ms: int
    actions: tuple[ActiveAction, ...]
    adaptive: tuple[AdaptiveState, ...]
    warmups: tuple[WarmupState, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "now_ms": self.now_ms,
            "actions": [a.to_json() for a in self.actions],
            "adaptive": [a.to_json() for a in self.adaptive],
            "warmups": [w.to_json() for w in self.warmups],
        }


@dataclass(frozen=True)
class HistoryEntry:
    """One entry of the shaping audit series: an activation, a clear or an AIMD change."""

    id: str
    at_ms: int
    rule: str
    action: str
    value: str
    destination: str
    node: str
    reply: str
    expires_ms: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at_ms": self.at_ms,
            "rule": self.rule,
            "action": self.action,
            "value": self.value,
            "destination": self.destination,
            "node": self.node,
            "reply": self.reply,
            "expires_ms": self.expires_ms,
        }
