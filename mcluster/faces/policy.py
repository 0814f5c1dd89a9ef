"""The agent's Postfix policy service (``mcluster agent --policy 127.0.0.1:10031``).

Postfix's policy delegation protocol: the SMTP server sends ``name=value`` lines ended by
an empty line; the service answers ``action=...`` and an empty line, and keeps the
connection for the next request (one connection per smtpd process, many requests).

Each mail transaction (Postfix's ``instance`` attribute) is decided once, at the first
request Postfix sends for it (whatever stage that is): every ``client_rates`` rule of
the ``Policy`` scope is one cluster-wide window per client block, all acquired
all-or-nothing. Later requests of the same transaction get the same answer without
counting again. An admitted transaction is counted in ``inbound_cidr`` (when the cluster
replicates it) as a lease on the client address, released at ``END-OF-MESSAGE``, when
the same smtpd connection starts another transaction or closes, or after
``transaction_timeout``: Postfix sends no event when a client disconnects.

``Quota`` scopes (mcluster.quotas) count in the same call at the transaction's first
request (messages, and a probe of bytes quotas), then at each RCPT (recipients) and at
END-OF-MESSAGE (bytes); mcluster.quotas.engine decides, this module only asks it.

Garbage on a connection (a line without ``=``, a line over 4 KiB, binary data) closes
that connection with a logged reason; nothing else is affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mcluster.agent.node import Node
from mcluster.agent.outbox import RETRY_ERRORS
from mcluster.agent.throttles import Throttles
from mcluster.config import ClusterConfig
from mcluster.errors import Error, UnknownObject
from mcluster.faces import listen
from mcluster.objects.policy import (
    FAMILY,
    RULES_CACHE,
    Address,
    ClientRate,
    PolicyConfig,
    WindowDefs,
    parse_client,
    policy_config,
)
from mcluster.objects.rates import MAX_COUNT
from mcluster.quotas.engine import (
    ADMITTED,
    MAIL_STATES,
    RECIPIENT_STATES,
    Limit,
    Outcome,
    QuotaEngine,
    retry_seconds,
)
from mcluster.security.clients import PolicyGuard, RefusalLog
from mcluster.security.refusals import Refusals

if TYPE_CHECKING:
    from mcluster.faces.policy_conn import PolicyConnection

log = logging.getLogger("mcluster.policy")

MAX_LINE = 4096
MAX_ATTRIBUTES = 256
MAX_REQUEST = MAX_ATTRIBUTES * (MAX_LINE + 2)
# smtpd reads each answer before it asks again: more than this unsent is a client that
# sends without reading (then wait for it, as drain() does, instead of buffering more)
WRITE_BUFFER = 65536
MAX_TRANSACTIONS = 200_000
REQUEST = "smtpd_access_policy"
END_OF_MESSAGE = "END-OF-MESSAGE"
# The control characters a request may not hold (tab allowed): deleting them with
# bytes.translate and comparing lengths is one C pass, 0.6 us against the 2.6 us of a
# regular expression search over a 600-byte request.
_CONTROL = bytes([*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F])
_BINARY_LINES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)")  # CRLF allowed


def admits(action: str) -> bool:
    """Whether Postfix takes the mail on this answer (DUNNO, or a quota's WARN)."""
    return action == "DUNNO" or action.startswith("WARN ")


class Garbage(Error):
    """What a client sent is not the policy protocol; the connection is closed."""


@dataclass
class PolicyStats:
    requests: int = 0
    connections: int = 0
    garbage: int = 0
    degraded: int = 0
    errors: int = 0
    transactions: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    released: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class Transaction:
    """One mail transaction as the policy service saw it."""

    client: str
    action: str
    leased: bool
    started: float
    quotas_due: bool = False  # asked before MAIL: the message quotas are still to count
    recipients_counted: bool = False  # asked at RCPT or later: recipients quotas counted


@dataclass(slots=True)
class Step:
    """A request whose answer waits for a decision: the windows to acquire, and what
    ``PolicyService.complete`` needs then (``txn``: a later request of an admitted
    transaction; else a new transaction of ``client``)."""

    state: str
    instance: str
    address: str
    limits: list[Limit]
    txn: Transaction | None = None
    client: Address | None = None
    client_text: str = ""
    first: bool = False


def cut_request(buffer: bytes) -> tuple[dict[str, str] | None, int]:
    """The first whole request in ``buffer`` and how many bytes it took, or (None, 0)
    when none is whole yet; Garbage as soon as the buffer cannot be the protocol."""
    if buffer.startswith((b"\n", b"\r\n")):  # an empty line first, however it was read
        raise Garbage("an empty request (no name=value line before the empty line)")
    end = buffer.find(b"\n\n")
    if end >= 0 or b"\r" in buffer:  # CRLF lines end with "\n\r\n"
        crlf = buffer.find(b"\n\r\n")
        if crlf >= 0 and (end < 0 or crlf < end):
            end = crlf
    if end < 0:
        lines_end = buffer.rfind(b"\n") + 1
        if len(buffer) - lines_end > MAX_LINE:
            raise Garbage(f"a line longer than {MAX_LINE} bytes")
        if _BINARY_LINES.search(buffer, 0, lines_end):  # not the protocol: say so now
            raise Garbage("binary data (control characters)")
        if len(buffer) > MAX_REQUEST:
            raise Garbage(f"more than {MAX_ATTRIBUTES} attributes in one request")
        return None, 0
    skip = 3 if buffer[end + 1 : end + 2] == b"\r" else 2
    return parse_request(buffer[:end]), end + skip


def parse_request(block: bytes) -> dict[str, str]:
    """The attributes of one request (its lines, without the empty line that ends it)."""
    if b"\r" in block:
        block = b"\n".join(
            line[:-1] if line.endswith(b"\r") else line for line in block.split(b"\n")
        )
    if block.count(b"\n") >= MAX_ATTRIBUTES:
        raise Garbage(f"more than {MAX_ATTRIBUTES} attributes in one request")
    if len(block) > MAX_LINE and max(map(len, block.split(b"\n"))) > MAX_LINE:
        raise Garbage(f"a line longer than {MAX_LINE} bytes")
    if len(block.translate(None, _CONTROL)) != len(block):
        raise Garbage("binary data (control characters)")
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        raise Garbage("binary data (not UTF-8 text)") from None
    try:  # one C call for the usual request; the loop below only to name a bad line
        attrs: dict[str, str] = dict(line.split("=", 1) for line in text.split("\n"))
    except ValueError:
        attrs = {}
    if not attrs or "" in attrs:
        for line in text.split("\n"):
            name, sep, _ = line.partition("=")
            if not sep or not name:
                raise Garbage(f"a line that is not name=value: {line[:40]!r}")
    return attrs


def audit_events(node: Node) -> frozenset[str]:
    """The inbound audit event types the node's cluster counts (none without audit)."""
    try:
        recorder = node.audit
    except UnknownObject:
        return frozenset()
    counted = set()
    for event in ("connect", "reception", "rejection"):
        try:
            recorder.prepare(event, ip="127.0.0.1")  # validates only: nothing is counted
        except ValueError:
            continue
        counted.add(event)
    return frozenset(counted)


class PolicyService:
    """Answers Postfix's policy requests for one node, from the ``Policy`` config."""

    def __init__(
        self,
        node: Node,
        config: PolicyConfig,
        guard: PolicyGuard | None = None,
        refusals: Refusals | None = None,
    ) -> None:
        self.node = node
        self.config = config
        self.guard = guard or PolicyGuard()  # who may connect (default: loopback), bounds
        self.refusals = refusals or Refusals()
        self._refusal_log = RefusalLog()
        self.windows = Throttles(lambda: node.scripts, node.keys, FAMILY, node.name)
        self.windows.defs = WindowDefs(config)
        self.windows.max_cost, self.windows.probes = MAX_COUNT, True  # bytes quotas
        self.quotas = QuotaEngine(config.quotas)
        counted = node.config.of_type("inbound_cidr")
        self.count_object = counted[0].name if counted else None
        self.transactions: OrderedDict[str, Transaction] = OrderedDict()
        self._client_cache: dict[Address, tuple[tuple[Limit, ...], str]] = {}
        self.stats = PolicyStats()
        self._server: asyncio.Server | None = None
        self._unix: tuple[Path, int] | None = None  # the socket file served, its inode
        self.connections: set[PolicyConnection] = set()  # served now (see admit, forget)
        self._tasks: set[asyncio.Future[None]] = set()  # batch calls in flight
        from mcluster.faces.policy_conn import DecisionBatch  # it builds on this module

        self.batch = DecisionBatch(self)
        self._sweeper: asyncio.Task[None] | None = None
        self._quota_task: asyncio.Task[None] | None = None
        self._audit_events: frozenset[str] = frozenset()

    # -- life cycle -------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        """Serve on a TCP address (port 0: a free one, see ``port``)."""
        from mcluster.faces.policy_conn import PolicyConnection

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: PolicyConnection(self), host, port)
        self._started()

    async def start_unix(self, path: Path) -> None:
        """Serve on a Unix socket at ``path`` (see mcluster/faces/listen.py): its peers are
        this host's processes, admitted as loopback ones are. ListenError when it cannot."""
        from mcluster.faces.policy_conn import PolicyConnection

        listen.claim(path)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: PolicyConnection(self), str(path))
        self._unix = (path, listen.made(path))
        self._started()

    def _started(self) -> None:
        self._audit_events = audit_events(self.node)
        self._sweeper = asyncio.create_task(self._sweep_loop())
        okeys = self.node.keys.object(FAMILY)  # quotas: published, refusals added up
        self._quota_task = asyncio.create_task(self.quotas.run(lambda: self.node.client, okeys))
        self.node.reload_hooks.append(self.adopt)
        if self.count_object is None:
            log.info('transactions are not counted: the cluster does not replicate "inbound_cidr"')

    @property
    def port(self) -> int:
        assert self._server is not None, "the policy service is not started"
        return int(self._server.sockets[0].getsockname()[1])

    def adopt(self, config: ClusterConfig) -> None:
        """A reloaded config's Policy scope, from the next request on: rules, quotas,
        on_error (checked by the reload before anything was applied). Who may connect is
        read at start only: a reload must not shut out every smtpd."""
        policy = policy_config(config)
        self.config = policy
        self.windows.defs = WindowDefs(policy)
        self.quotas.adopt(policy.quotas)
        self._client_cache.clear()

    async def stop(self) -> None:
        """Stop listening, close every connection, release every open transaction."""
        with contextlib.suppress(ValueError):
            self.node.reload_hooks.remove(self.adopt)
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close()
        self.windows.cancel_renewals()
        for task in (self._sweeper, self._quota_task, *self._tasks):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._unix is not None:
            listen.release(*self._unix)
            self._unix = None
        for instance in list(self.transactions):
            self.release(instance, "stopped")

    # -- the protocol -----------------------------------------------------------------

    def admit(self, conn: PolicyConnection, peer: object, transport: asyncio.Transport) -> bool:
        """Serve ``conn`` (counted in ``connections`` until ``forget``), or refuse it: closed
        at once, before anything is read or answered, and counted (logged once a minute
        per address)."""
        host = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
        guard = self.guard
        if self._unix is not None:  # a process of this host, as a loopback peer is
            host, allowed = f"unix:{self._unix[0]}", True
        else:
            allowed = guard.allows(host)
        if not allowed:
            reason = "not_allowed"
            if self._refusal_log.should_log(host):
                log.warning("policy client %s is not in Policy clients; connection closed", host)
        elif len(self.connections) >= guard.max_connections:
            reason = "connections"
            if self._refusal_log.should_log(host):
                log.warning("policy client %s refused: %d connections open (max_connections)",
                            host, len(self.connections))  # fmt: skip
        else:
            self.connections.add(conn)
            self.stats.connections += 1
            return True
        self.refusals.count("policy", reason)
        transport.abort()  # no answer, no lingering
        return False

    def forget(self, conn: PolicyConnection) -> None:
        """``conn`` closed: the transaction it was in ends (once; nothing for a connection
        never admitted or already forgotten)."""
        if conn in self.connections:
            self.connections.discard(conn)
            self.release(conn.current, "closed")

    def track(self, task: asyncio.Future[None]) -> None:
        """Keep a batch call's task until it ends (the loop holds only weak references)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def answer(self, attrs: dict[str, str]) -> str:
        """The action for one request (without ``action=``). Garbage when it is not a
        policy request; any other failure answers the ``on_error`` policy."""
        step = self.begin(attrs)
        if isinstance(step, str):
            return step
        return self.complete(step, await self.limit(step.limits, step.address))

    def begin(self, attrs: dict[str, str]) -> str | Step:
        """A request's answer when no window needs asking, else the Step that waits for
        its decision (``complete`` then makes the answer). Garbage when it is not a policy
        request."""
        self.stats.requests += 1
        if attrs.get("request") != REQUEST:
            raise Garbage(f"request={attrs.get('request', '')!r}, expected {REQUEST}")
        state = attrs.get("protocol_state", "").upper()
        instance = attrs.get("instance", "")
        address = attrs.get("client_address", "")
        if state == "CONNECT":
            self._audit("connect", address)
        txn = self.transactions.get(instance) if instance else None
        if txn is None:  # a new transaction: every window of its client, its quotas
            client = parse_client(address)
            first = state in MAIL_STATES
            limits, client_text = self._client_limits(client) if client is not None else ([], "")
            if self.quotas:
                limits += self.quotas.limits(attrs, state, first=first, recipients_due=True)
            if client is None and not self.quotas:  # no client address to limit (local)
                return self._finish(state, instance, address, "DUNNO")
            self.stats.transactions += 1
            step = Step(state, instance, address, limits, None, client, client_text, first)
        elif txn.action == "DUNNO" and self.quotas:  # admitted: recipients, bytes
            # (and its message quotas when the first request came before MAIL)
            first = txn.quotas_due and state in MAIL_STATES
            if first:
                txn.quotas_due = False
            due = not txn.recipients_counted
            txn.recipients_counted |= state in RECIPIENT_STATES
            limits = self.quotas.limits(attrs, state, first=first, recipients_due=due)
            if not limits:
                return self._finish(state, instance, address, "DUNNO")
            step = Step(state, instance, address, limits, txn)
        else:
            return self._finish(state, instance, address, txn.action)
        if not step.limits:
            return self.complete(step, ADMITTED)
        return step

    def complete(self, step: Step, outcome: Outcome) -> str:
        """The answer of a Step once its windows are decided: a new transaction is
        remembered (and leased), a later request's refusal becomes the transaction's."""
        txn = step.txn
        if txn is not None:
            if outcome.transaction != "DUNNO":
                txn.action = outcome.transaction
            return self._finish(step.state, step.instance, step.address, outcome.answer)
        if outcome.transaction != "DUNNO":
            self._audit("rejection", step.address)
        if step.instance and step.state != END_OF_MESSAGE:
            client = step.client
            leased = outcome.transaction == "DUNNO" and self.count_object is not None
            leased = leased and client is not None
            if leased:
                self.node.record(self.count_object or "", step.client_text, +1)
            self.transactions[step.instance] = Transaction(
                step.client_text,
                outcome.transaction,
                leased,
                time.monotonic(),
                quotas_due=not step.first,
                recipients_counted=step.state in RECIPIENT_STATES,
            )
            if len(self.transactions) > MAX_TRANSACTIONS:
                self.release(next(iter(self.transactions)), "overflow")
        return self._finish(step.state, step.instance, step.address, outcome.answer)

    def _finish(self, state: str, instance: str, address: str, action: str) -> str:
        if state == END_OF_MESSAGE:
            if admits(action):
                self._audit("reception", address)
            self.release(instance, "end-of-message")
        self.stats.actions[action.split(" ", 1)[0]] += 1
        return action

    def _client_limits(self, client: Address) -> tuple[list[Limit], str]:
        """The windows of a client's blocks (a new list: the caller adds its quotas) and
        the address as text, remembered per address: a busy client asks again and again."""
        found = self._client_cache.get(client)
        if found is None:
            limits = tuple(
                Limit(window, 1, refusal=functools.partial(self._client_refusal, rule, block))
                for rule, block, window in self.config.rules_for(client)
            )
            if len(self._client_cache) >= RULES_CACHE:
                self._client_cache.clear()
            found = self._client_cache[client] = (limits, str(client))
        return list(found[0]), found[1]

    def _client_refusal(self, rule: ClientRate, block: str, retry_after_ms: int) -> str:
        # The same whole seconds as a quota's answer: the scripts' retry_after_ms is at most
        # the window (_window.lua), and rounding up must not pass it either.
        wait = retry_seconds(retry_after_ms, rule.rate)
        return (
            f"DEFER_IF_PERMIT 4.7.1 too many mail transactions from {block} "
            f"(cluster limit {rule.rate.count} per {rule.rate.period:g} s); try again in {wait} s"
        )

    async def limit(
        self,
        limits: list[Limit],
        address: str,
        until: float | None = None,
        recipient: str = "",
        warning: str = "",
    ) -> Outcome:
        """Acquire ``limits`` all-or-nothing within the deadline (``on_error`` answers
        when Redis does not, or when anything fails). ``until``, ``recipient`` and
        ``warning`` go on from a batch decision that asked for more."""
        if not limits:
            return ADMITTED
        # Every decision of this answer ends by the deadline: a deadline passed down to
        # the throttles' own timers, not an asyncio.timeout per answer (7 % of the agent's
        # GIL time in a py-spy profile).
        if until is None:
            until = asyncio.get_running_loop().time() + self.config.deadline_ms / 1000
        acquire = functools.partial(self.windows.acquire, until=until)
        try:
            outcome = await self.quotas.decide(
                limits, acquire, recipient=recipient, warning=warning
            )
        except (TimeoutError, *RETRY_ERRORS) as exc:
            log.debug("policy decision degraded (%s)", type(exc).__name__)
            outcome = Outcome("", "", degraded=True)
        except Exception:  # never let a request kill the connection or the agent
            return self.failed(address)
        if outcome.degraded:
            return self.degrade()
        return outcome

    def degrade(self) -> Outcome:
        self.stats.degraded += 1
        action = self._on_error()
        return Outcome(action, action)

    def failed(self, address: str) -> Outcome:
        """Called in an ``except``: logs the exception, answers ``on_error``."""
        log.exception("policy decision failed for %s; answering %s", address, self._on_error())
        self.stats.errors += 1
        action = self._on_error()
        return Outcome(action, action)

    def _on_error(self) -> str:
        if self.config.on_error == "DUNNO":
            return "DUNNO"
        return "DEFER_IF_PERMIT 4.7.1 the policy service is unavailable; try again later"

    # -- transactions -----------------------------------------------------------------

    def release(self, instance: str, why: str) -> None:
        txn = self.transactions.pop(instance, None) if instance else None
        if txn is None:
            return
        self.stats.released[why] += 1
        if txn.leased and self.count_object is not None:
            self.node.record(self.count_object, txn.client, -1)

    def sweep(self, now: float | None = None) -> int:
        """Release the transactions older than ``transaction_timeout``; how many."""
        cutoff = (time.monotonic() if now is None else now) - self.config.transaction_timeout
        expired = []
        for instance, txn in self.transactions.items():
            if txn.started > cutoff:
                break
            expired.append(instance)
        for instance in expired:
            self.release(instance, "timeout")
        return len(expired)

    async def _sweep_loop(self) -> None:
        interval = min(5.0, self.config.transaction_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            self.sweep()

    def _audit(self, event: str, address: str) -> None:
        """Count a connect, reception or rejection in the inbound audit metrics, when the
        cluster counts that event type (``Replicate "metrics" { parameters = ... }``)."""
        if event in self._audit_events:
            try:
                self.node.audit.record(event, ip=address)
            except ValueError:  # not an address the audit takes: nothing to count
                log.debug("audit: %s from %r not counted", event, address)
