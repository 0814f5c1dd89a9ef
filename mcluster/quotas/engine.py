"""Deciding quotas for the policy service: which windows a request counts in, and the answer.

Every stage is one throttle request of the policy family, all-or-nothing:

- a transaction's first request at MAIL or later counts 1 in every ``messages`` quota
  that applies (with the ``client_rates`` windows the service adds), and probes every
  ``bytes`` quota for room for the message (``size``, from ``MAIL FROM SIZE=``, or 1
  byte: a spent quota refuses the next transaction at once) without counting it;
- each RCPT counts 1 in every ``recipients`` quota; the recipient that would exceed is
  refused, the ones before it stand (and the transaction goes on); when the service is
  asked no RCPT of a transaction (only from ``smtpd_data_restrictions`` or
  ``smtpd_end_of_data_restrictions``), its first request from DATA on counts
  ``recipient_count`` at once, and refuses the whole message if they do not fit;
- END-OF-MESSAGE counts ``size`` in every ``bytes`` quota; the message that would cross
  the limit is refused there.

When the first request is a RCPT, its recipient quotas go in the same call. A refusal
says which windows had no room: a transaction window refuses the transaction; only
recipient windows refuse this recipient, and the transaction's windows are asked again
alone; only ``WARN`` quotas (shadow mode) let the mail through with a warning, the
others asked again without them. Nothing is counted for a refused request, so a quota
never over-admits across the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from redis.asyncio import Redis

from mcluster.agent.outbox import RETRY_ERRORS, stop_if_cancelled
from mcluster.objects.quota_config import Quota
from mcluster.objects.quota_keys import window_name
from mcluster.objects.rates import MAX_COUNT, Rate
from mcluster.objects.throttle import Decision
from mcluster.quotas import usage
from mcluster.store.keys import ObjectKeys

log = logging.getLogger("mcluster.policy")

Stage = Literal["transaction", "recipient"]
#: protocol states at which a transaction has a sender (message quotas wait for one)
MAIL_STATES = frozenset({"MAIL", "RCPT", "DATA", "BDAT", "END-OF-MESSAGE"})
#: states by which the recipients are known (asked at RCPT, or counted at DATA)
RECIPIENT_STATES = frozenset({"RCPT", "DATA", "BDAT", "END-OF-MESSAGE"})
END_OF_MESSAGE = "END-OF-MESSAGE"
#: enhanced status codes of each refusing action (WARN, HOLD, DISCARD take none)
CODES = {"DEFER_IF_PERMIT": "4.7.1", "DEFER": "4.7.1", "REJECT": "5.7.1"}
MAX_MADE = 65536  # Limits remembered (a busy user or sender asks again and again)
MAX_ASKED = 4096  # requests' windows remembered by what they read (see limits)
MAX_SHOWN = 100  # characters of a key value quoted in an answer
FLUSH_EVERY = 2.0  # seconds between adding this agent's refusal counts to the cluster's
MAX_HOT = 10_000  # key values per quota noted between two flushes


@dataclass(frozen=True)
class Limit:
    """One window a request counts in: ``cost`` (negative: a probe for room, nothing
    counted), the stage it belongs to, and whose it is (a quota, or a client rate whose
    refusal text the policy service writes with ``refusal``)."""

    window: str
    cost: int
    stage: Stage = "transaction"
    quota: Quota | None = None
    value: str = ""
    refusal: Callable[[int], str] | None = None
    # set once from the fields above: settle reads them for every limit of every request
    need: int = field(init=False, compare=False)  # the room it needs: |cost|
    warn_only: bool = field(init=False, compare=False)  # a WARN quota's (shadow mode)

    def __post_init__(self) -> None:
        object.__setattr__(self, "need", abs(self.cost))
        object.__setattr__(self, "warn_only", self.quota is not None and self.quota.warn_only)


@dataclass
class QuotaStats:
    """Refusals per (quota, action); WARN quotas' would-have-refused per quota."""

    refused: Counter[tuple[str, str]] = field(default_factory=Counter)
    warned: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Outcome:
    """What a stage decided: ``transaction`` is the answer for the whole transaction
    (DUNNO when admitted), ``answer`` the one for this request; ``degraded`` when Redis
    did not answer in time (the caller answers its ``on_error``)."""

    transaction: str
    answer: str
    degraded: bool = False


ADMITTED = Outcome("DUNNO", "DUNNO")


def _number(attrs: dict[str, str], name: str) -> int:
    """A count Postfix sent (``size``, ``recipient_count``): 0 when it is not a number,
    at most MAX_COUNT (more can fit no limit: refused, never an error)."""
    try:
        return min(MAX_COUNT, max(0, int(attrs.get(name, "0") or "0")))
    except ValueError:
        return 0


def _size(attrs: dict[str, str]) -> int:
    return _number(attrs, "size")


def retry_seconds(retry_ms: int, rate: Rate) -> int:
    """Whole seconds to wait, at least 1, never more than the window."""
    return max(1, min(-(-retry_ms // 1000), int(rate.period) or 1))


def _shown(value: str) -> str:
    """A key value as an SMTP reply may quote it: printable ASCII (an SMTPUTF8 address's
    other characters become ?), at most MAX_SHOWN characters, ``<>`` when empty."""
    text = "".join(ch if " " <= ch <= "~" else "?" for ch in value) if value else "<>"
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def quota_reason(limit: Limit, retry_ms: int) -> str:
    """``quota "per_user" exceeded for sasl_username alice (limit 3 messages per 60 s);
    try again in 42 s``"""
    quota = limit.quota
    assert quota is not None
    rate = quota.rate_for(limit.value)
    head = f'quota "{quota.name}" exceeded for {quota.key} {_shown(limit.value)}'
    if retry_ms < 0 or limit.need > rate.count:  # can never fit (a message over the limit)
        what = (
            f"a {limit.need}-byte message is"
            if quota.count == "bytes"
            else (f"{limit.need} {quota.count} at once are")
        )
        return f"{head} ({what} over the limit of {quota.limit_text(rate)})"
    return (
        f"{head} (limit {quota.limit_text(rate)}); try again in {retry_seconds(retry_ms, rate)} s"
    )


def quota_answer(limit: Limit, retry_ms: int) -> str:
    """The action text Postfix gets: ``DEFER_IF_PERMIT 4.7.1 quota ...``."""
    assert limit.quota is not None
    action = limit.quota.action
    code = CODES.get(action)
    reason = quota_reason(limit, retry_ms)
    return f"{action} {code} {reason}" if code else f"{action} {reason}"


def _client(attrs: dict[str, str]) -> str:
    """The client address as exempt blocks are matched (IPv4-mapped IPv6 as IPv4)."""
    try:
        address = ipaddress.ip_address(attrs.get("client_address", "").strip())
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class QuotaEngine:
    """The ``Quota`` scopes of one policy service: limits per request, and decisions."""

    def __init__(self, quotas: Sequence[Quota]) -> None:
        self.stats = QuotaStats()
        self._unsent: Counter[str] = Counter()  # refusal counts not yet in Redis
        self._hot: dict[str, set[str]] = {}  # quota -> key values at half their limit or more
        self.quotas: tuple[Quota, ...] = ()
        self.adopt(quotas)

    def adopt(self, quotas: Sequence[Quota]) -> None:
        """Take up the quotas of a reloaded config from the next request (the counts stay:
        a window is named by its quota and key value; the statistics go on)."""
        before, self.quotas = self.quotas, tuple(quotas)
        self.by_name = {q.name.casefold(): q for q in self.quotas}
        self._messages = [q for q in self.quotas if q.count == "messages"]
        self._recipients = [q for q in self.quotas if q.count == "recipients"]
        self._bytes = [q for q in self.quotas if q.count == "bytes"]
        # run() publishes them (again); an agent that never had any leaves the others'
        self.published = not (self.quotas or before)
        self._made: dict[tuple[str, str, int, str], Limit] = {}
        # what limits() reads of a request, and its answers by those values (see there)
        self._reads = tuple(
            sorted(
                {q.key.attribute for q in self.quotas}
                | {"client_address", "size", "recipient_count"}
            )
        )
        self._asked: dict[tuple[object, ...], tuple[Limit, ...]] = {}
        self._answers: dict[tuple[str, int, str, int], str] = {}  # see _refuse

    def __bool__(self) -> bool:
        return bool(self.quotas)

    def _limit(
        self, quota: Quota, attrs: dict[str, str], cost: int, stage: Stage = "transaction"
    ) -> Limit | None:
        value = quota.key.value(attrs)
        if value is None or (value == "" and not quota.empty_counts):
            return None
        if quota.exempt.any:
            probe = value
            if quota.key.is_address and quota.key.prefix is not None:
                probe = _client(attrs)
            if probe in quota.exempt:
                return None
        made = (quota.name, value, cost, stage)
        limit = self._made.get(made)
        if limit is None:  # a Limit is immutable: one per window, cost and stage will do
            if len(self._made) >= MAX_MADE:
                self._made.clear()
            limit = self._made[made] = Limit(
                window_name(quota.name, value), cost, stage, quota, value
            )
        return limit

    def limits(
        self, attrs: dict[str, str], state: str, *, first: bool, recipients_due: bool = False
    ) -> list[Limit]:
        """The quota windows one request counts in: with ``first`` (the transaction's
        first request at MAIL or later) its messages quotas and bytes probes; at RCPT its
        recipients quotas (with ``recipients_due``, no RCPT asked before: at DATA or
        END-OF-MESSAGE all its recipients at once); at END-OF-MESSAGE its bytes.

        The same values of what it reads give the same windows: a spent account, the case
        quotas are for, asks again and again, so the answer is remembered (3.5 of a
        refused request's 28 us of Python, measured, before)."""
        asked = (state, first, recipients_due, *[attrs.get(n) for n in self._reads])
        found = self._asked.get(asked)
        if found is None:
            if len(self._asked) >= MAX_ASKED:
                self._asked.clear()
            found = self._asked[asked] = tuple(self._find(attrs, state, first, recipients_due))
        return list(found)

    def _find(
        self, attrs: dict[str, str], state: str, first: bool, recipients_due: bool
    ) -> list[Limit]:
        out: list[Limit | None] = []
        size = _size(attrs)
        if recipients_due and state in RECIPIENT_STATES and state != "RCPT":
            count = max(1, _number(attrs, "recipient_count"))
            out += (self._limit(q, attrs, count) for q in self._recipients)
        if first:
            out += (self._limit(q, attrs, 1) for q in self._messages)
            if state != END_OF_MESSAGE:
                out += (self._limit(q, attrs, -max(1, size)) for q in self._bytes)
        if state == "RCPT":
            out += (self._limit(q, attrs, 1, "recipient") for q in self._recipients)
        if state == END_OF_MESSAGE and size > 0:
            out += (self._limit(q, attrs, size) for q in self._bytes)
        return [limit for limit in out if limit is not None]

    def _refuse(self, limit: Limit, retry_ms: int) -> str:
        if limit.refusal is not None:
            return limit.refusal(retry_ms)
        quota = limit.quota
        assert quota is not None
        self.stats.refused[(quota.name, quota.action)] += 1
        self._unsent[f"refused:{quota.name}"] += 1
        # The same text for every refusal of one window and cost within the same whole
        # second of retry time: a spent account refused again and again (the case quotas
        # are for) gets it from here, not from four f-strings (3 us a refusal).
        seconds = -(-retry_ms // 1000) if retry_ms >= 0 else -1
        made = (limit.window, limit.cost, limit.stage, seconds)
        answer = self._answers.get(made)
        if answer is None:
            if len(self._answers) >= MAX_MADE:
                self._answers.clear()
            answer = self._answers[made] = quota_answer(limit, retry_ms)
        return answer

    async def decide(
        self,
        limits: Sequence[Limit],
        acquire: Callable[[list[tuple[str, int]]], Awaitable[Decision]],
        *,
        recipient: str = "",
        warning: str = "",
    ) -> Outcome:
        """Acquire ``limits`` all-or-nothing (asking again as the module docstring says
        after a refusal of recipient or WARN windows only). ``recipient`` and ``warning``
        go on from a ``settle`` that asked for more."""
        active = list(limits)
        while active:
            decision = await acquire([(limit.window, limit.cost) for limit in active])
            step = self.settle(active, decision, recipient, warning)
            if isinstance(step, Outcome):
                return step
            active, recipient, warning = step
        return Outcome("DUNNO", recipient or warning or "DUNNO")

    def settle(
        self, active: Sequence[Limit], decision: Decision, recipient: str = "", warning: str = ""
    ) -> Outcome | tuple[list[Limit], str, str]:
        """What one decision on ``active`` makes of the request: its Outcome, or the
        windows to ask again (with the recipient refusal and warning so far) when only
        recipient or WARN windows refused. Synchronous, so that the policy service can
        settle a whole batch of decisions without a coroutine per request."""
        if decision.degraded:
            return Outcome("", "", degraded=True)
        left = dict(decision.remaining)
        self._note_hot(active, left)
        if decision.allowed:
            return Outcome("DUNNO", recipient or warning or "DUNNO")
        # a window the decision does not name had room (a refusal decided in process
        # names only the spent window: Throttles.known_refusal)
        tripped = [a for a in active if left.get(a.window, a.need) < a.need] or list(active)
        enforcing = [a for a in tripped if not a.warn_only]
        retry = decision.retry_after_ms
        for stopped in enforcing:
            if stopped.stage == "transaction":
                answer = self._refuse(stopped, retry)
                return Outcome(answer, answer)
        if enforcing:  # recipient windows only: this recipient is refused
            recipient = recipient or self._refuse(enforcing[0], retry)
            rest = [a for a in active if a.stage != "recipient"]
        else:
            for limit in tripped:  # WARN quotas only: shadow mode
                assert limit.quota is not None
                self.stats.warned[limit.quota.name] += 1
                self._unsent[f"would_refuse:{limit.quota.name}"] += 1
            warning = warning or f"WARN {quota_reason(tripped[0], retry)}"
            rest = [a for a in active if a not in tripped]
        if not rest:
            return Outcome("DUNNO", recipient or warning or "DUNNO")
        return rest, recipient, warning

    async def run(self, client: Callable[[], Redis], okeys: ObjectKeys) -> None:
        """Publish the quotas for consoles, then add this agent's refusal counts to the
        cluster's every FLUSH_EVERY s (until cancelled; a last flush then)."""
        try:
            while True:
                with contextlib.suppress(*RETRY_ERRORS):
                    if not self.published:
                        await usage.publish(client(), okeys, self.quotas)
                        self.published = True
                    await self.flush(client(), okeys)
                stop_if_cancelled()  # a cancel redis-py swallowed (found by fuzzing: stop hung)
                await asyncio.sleep(FLUSH_EVERY)
        except asyncio.CancelledError:
            with contextlib.suppress(*RETRY_ERRORS, TimeoutError):
                async with asyncio.timeout(1):
                    await self.flush(client(), okeys)
            raise

    def _note_hot(self, active: Sequence[Limit], left: dict[str, int]) -> None:
        """Remember the key values with half their limit or less left (the dashboard's
        "nearest their limit" reads them, instead of scanning every window)."""
        for limit in active:
            quota = limit.quota
            if quota is None:
                continue
            remaining = left.get(limit.window)
            if remaining is not None and 2 * remaining <= quota.rate_for(limit.value).count:
                hot = self._hot.setdefault(quota.name, set())
                if len(hot) < MAX_HOT:
                    hot.add(limit.value)

    async def flush(self, client: Redis, okeys: ObjectKeys) -> None:
        unsent, self._unsent = self._unsent, Counter()
        hot, self._hot = self._hot, {}
        try:
            if unsent:
                await usage.add_counts(client, okeys, unsent)
                unsent = Counter()
            if hot:
                periods = {q.name: q.longest_period for q in self.quotas}
                await usage.add_hot(client, okeys, hot, periods)
        except BaseException:
            self._unsent.update(unsent)  # sent with the next flush
            for name, values in hot.items():
                self._hot.setdefault(name, set()).update(values)
            raise
