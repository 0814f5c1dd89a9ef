"""Adaptive shaping on a node: outcome reports fire response rules, and every OBTM decision
and connection open of a shaped destination checks what is in force, cluster-wide.

Every action lives in Redis (``lua_scripts/shaping_outcome.lua``) with its expiry, under the
hash tag ``{shaping}``; a shaped route's OBTM decision first runs ``shaping_check`` (one
round trip), so a suspension set on one node holds on every node at its next decision:
no propagation to wait for, nodes joining later see it, and nothing depends on the node
that reported the reply staying alive (it neither lifts nor extends the action). Expiry
is judged by Redis TIME only. Routes that no rule can touch skip the check entirely.

Keys (``B`` = ``NS:{shaping}``): ``B:act:DEST`` hash rule -> "action\\tvalue\\texpires";
``B:active`` zset of "rule\\tdest" by expiry (listing); ``B:audit`` stream (the audit series
of activations, clears and AIMD changes); ``B:counts`` hash; ``B:providers`` hash domain ->
provider; ``B:hits:RULE:DEST`` zset (trigger matches); ``B:aimd:NAME`` hash (AIMD rate and
outcome counts); ``B:warmup:NAME`` (a warm-up's first use, Redis ms).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from mcluster.agent.outbox import RETRY_ERRORS
from mcluster.agent.service import ServiceContext
from mcluster.errors import AuditError
from mcluster.objects.outbound import OBTM_OPTION, Cap, OutboundPolicy, Route
from mcluster.objects.rates import Rate
from mcluster.objects.throttle import Decision, ThrottleDef
from mcluster.shaping.config import (
    AdaptiveRule,
    Destination,
    ShapingConfig,
    ShapingRule,
    WarmupRule,
    shaping_config,
)
from mcluster.shaping.model import (
    ActiveAction,
    AdaptiveState,
    HistoryEntry,
    Outcome,
    OutcomeResult,
    RuleFiring,
    ShapingError,
    ShapingState,
    WarmupState,
)
from mcluster.store.keys import ClusterKeys, text

if TYPE_CHECKING:
    from mcluster.agent.audit_recorder import AuditRecorder
    from mcluster.agent.throttles import Throttles

log = logging.getLogger("mcluster.shaping")

AUDIT_LENGTH = 10_000  # entries kept in the audit stream (approximately)
#: ms: a check Redis does not answer in time is skipped (as OBTM's on_error = allow);
#: ``cluster { shaping_deadline_ms = N }`` sets it, and the deadline of shaping's buckets.
DEFAULT_DEADLINE_MS = 50
MAX_LEARNED = 100_000  # domains whose provider a node remembers at most
PROVIDER_TTL = 1.0  # s: how long a node trusts "this domain has no known provider"
#: A count key under every connection to a destination that has a ``connections`` rule,
#: so the cap, once in force, counts the connections already open.
UNCAPPED = 1_000_000_000
#: The OBTM buckets shaping adds to a decision (beside the config's own bucket).
SHAPING_BUCKETS = ("adaptive:", "warmup:", "shaped:")


@dataclass(frozen=True)
class ShapingKeys:
    """The keys of shaping in one namespace (one hash tag: every script is one slot)."""

    base: str

    @staticmethod
    def of(keys: ClusterKeys) -> ShapingKeys:
        return ShapingKeys(f"{keys.namespace}:{{shaping}}")

    @property
    def providers(self) -> str:
        return f"{self.base}:providers"

    @property
    def active(self) -> str:
        return f"{self.base}:active"

    @property
    def audit(self) -> str:
        return f"{self.base}:audit"

    @property
    def counts(self) -> str:
        return f"{self.base}:counts"

    @property
    def defs(self) -> str:
        """The adaptive and warm-up rules the nodes run: "adaptive:NAME" / "warmup:NAME"
        -> JSON, so a console without the config can show them."""
        return f"{self.base}:defs"

    def act(self, dest: str) -> str:
        return f"{self.base}:act:{dest}"

    def aimd(self, name: str) -> str:
        return f"{self.base}:aimd:{name}"

    def warmup(self, name: str) -> str:
        return f"{self.base}:warmup:{name}"


@dataclass(frozen=True)
class RouteState:
    """What ``shaping_check`` found for one route."""

    now_ms: int
    provider: str | None
    actions: tuple[ActiveAction, ...]
    rates: dict[str, float]  # adaptive name -> current rate (per its period)
    days: dict[str, int]  # warm-up name -> day


@dataclass
class ShapingStats:
    checks: int = 0
    degraded: int = 0
    outcomes: int = 0
    aimd_steps: int = 0


class Shaper:
    """The shaping rules of one node's config, applied through Redis.

    A ``Service`` of the node (``agent/service.py``): once the node has joined, its loop
    publishes the rules for consoles and runs the AIMD steps whenever the node leads.
    It decides OBTM with the node's OBTM table (``obtm()``, made when the node starts),
    under the node's outbound policy, and counts outcomes in its audit recorder."""

    name = "shaping"

    def __init__(
        self,
        ctx: ServiceContext,
        config: ShapingConfig,
        outbound: OutboundPolicy,
        obtm: Callable[[], Throttles | None],
        audit: AuditRecorder | None = None,
    ) -> None:
        self.ctx = ctx
        self.config = config
        self.outbound = outbound  # the node's: a config reload adopts the new one in place
        self._obtm = obtm
        self.audit = audit
        self.keys = ShapingKeys.of(ctx.keys)
        self.stats = ShapingStats()
        #: Activations this node made, by (rule, action): ``mcluster_shaping_actions_total``.
        self.activations: Counter[tuple[str, str]] = Counter()
        #: OBTM refusals by (rule or bucket, reason): ``mcluster_shaping_refusals_total``.
        self.refusals: Counter[tuple[str, str]] = Counter()
        self._providers: dict[str, tuple[str | None, float]] = {}
        self.deadline_ms = ctx.config().get_int(
            "shaping_deadline_ms", DEFAULT_DEADLINE_MS, minimum=1
        )
        self._unpublished = True  # the rules are not in Redis for consoles yet
        self._inflight: dict[tuple[str | int, ...], asyncio.Future[RouteState | None]] = {}
        #: Suspensions seen by checks: destination -> [(action, end by monotonic clock)].
        self._seen: dict[str, list[tuple[ActiveAction, float]]] = {}
        self._index()

    # -- the service ------------------------------------------------------------------

    async def start(self) -> None:
        """Nothing before the join: decisions check Redis as they come."""

    async def after_join(self) -> None:
        self.ctx.spawn(self.run(), self.name)  # AIMD steps, on whichever node leads

    async def stop(self) -> None:
        """Nothing: the loop is the node's task, cancelled already."""

    def on_rejoin(self) -> None:
        """Nothing: actions live in Redis with their expiry, not in this node's epoch."""

    def _index(self) -> None:
        cfg = self.config
        self._dests = {str(r.dest) for r in cfg.rules} | {str(a.dest) for a in cfg.adaptive}
        self._by_provider = any(d.startswith("provider:") for d in self._dests)
        self._warm = {w.binding.casefold(): w for w in cfg.warmups}
        self._conn_dests = {str(r.dest) for r in cfg.rules if r.action == "connections"}
        self._adaptive = {a.name: a for a in cfg.adaptive}

    def reconfigure(self, config: ShapingConfig) -> None:
        """A config reload: the new rules from now on (actions in force stay)."""
        self.config = config
        self._index()
        self._unpublished = True

    # -- which routes are shaped ------------------------------------------------------

    def _known_provider(self, route: Route) -> tuple[bool, str | None]:
        """(known, provider) of the route: from its MX host, else what this node learned."""
        provider = self.config.provider_of(route.host, route.mx_hosts)
        if provider is not None:
            self._learn(route.domain.casefold(), provider, float("inf"))
            return True, provider
        learned = self._providers.get(route.domain.casefold())
        if learned is not None and learned[1] > time.monotonic():
            return True, learned[0]
        return False, None

    def _learn(self, domain: str, provider: str | None, until: float) -> None:
        """Remember a domain's provider (None: none known) until ``until`` (monotonic)."""
        if len(self._providers) >= MAX_LEARNED and domain not in self._providers:
            self._providers.clear()  # bounded: relearned from the next reports and checks
        self._providers[domain] = (provider, until)

    def shaped(self, route: Route) -> bool:
        """Whether any rule, adaptive rate or warm-up can touch ``route`` (else no check)."""
        if route.binding.casefold() in self._warm:
            return True
        if f"domain:{route.domain.casefold()}" in self._dests:
            return True
        if route.host and f"host:{route.host.casefold()}" in self._dests:
            return True
        if not self._by_provider:
            return False
        known, provider = self._known_provider(route)
        return not known or f"provider:{provider}" in self._dests

    # -- the check --------------------------------------------------------------------

    async def check(self, route: Route) -> RouteState | None:
        """What is in force for ``route`` now; None when Redis did not answer in time."""
        domain = route.domain.casefold().rstrip(".")
        host = (route.host or "").casefold().rstrip(".")
        _, provider = self._known_provider(route)
        args: list[str | int] = [self.keys.base, domain, host, provider or ""]
        args.append(len(self.config.adaptive))
        for rule in self.config.adaptive:
            args += [str(rule.dest), rule.name]
        warm = self._warm.get(route.binding.casefold())
        args.append(1 if warm else 0)
        if warm is not None:
            args += [warm.name, "" if warm.start_ms is None else warm.start_ms]
        # Concurrent checks of one route share one call (its answer is at most one round
        # trip old for those that joined): 50 callers cost one EVALSHA, not 50.
        key = tuple(args)
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running)
        running = self._inflight[key] = asyncio.get_running_loop().create_future()
        state = None
        try:
            state = await self._check(route, domain, args)
        finally:
            del self._inflight[key]
            running.set_result(state)  # an unexpected error: the others go on degraded
        return state

    async def _check(self, route: Route, domain: str, args: list[str | int]) -> RouteState | None:
        self.stats.checks += 1
        try:
            async with asyncio.timeout(self.deadline_ms / 1000):
                reply = await self.ctx.decision_scripts().run(
                    "shaping_check", [self.keys.providers], args
                )
        except (TimeoutError, *RETRY_ERRORS) as exc:
            self.stats.degraded += 1
            log.debug("shaping check skipped (%s)", type(exc).__name__)
            return None
        state = self._route_state(domain, reply)
        self._remember(route, state)
        return state

    def _destinations(self, route: Route, provider: str | None) -> list[str]:
        dests = [f"domain:{route.domain.casefold().rstrip('.')}"]
        if route.host:
            dests.append(f"host:{route.host.casefold().rstrip('.')}")
        if provider:
            dests.append(f"provider:{provider}")
        return dests

    def _remember(self, route: Route, state: RouteState) -> None:
        """Keep the suspensions a check found, with their end by this node's monotonic
        clock, for when Redis is too slow to answer the next check (``_seen_suspensions``)."""
        now = time.monotonic()
        for dest in self._destinations(route, state.provider):
            self._seen.pop(dest, None)  # lifted or expired unless found again below
        for action in state.actions:
            if action.action == "suspend":
                self._seen.setdefault(action.destination, []).append(
                    (action, now + action.remaining_ms / 1000)
                )
        if len(self._seen) > 10_000:  # bounded: drop the ones over
            self._seen = {d: k for d, k in self._seen.items() if k[0][1] > now}

    def _seen_suspensions(self, route: Route) -> list[ActiveAction]:
        """The suspensions of ``route`` this node last saw, with their time left now."""
        now = time.monotonic()
        _, provider = self._known_provider(route)
        found = []
        for dest in self._destinations(route, provider):
            for action, end in self._seen.get(dest, []):
                if end > now:
                    left = int((end - now) * 1000)
                    found.append(dataclasses.replace(action, remaining_ms=left))
        return found

    def _route_state(self, domain: str, reply: list[Any]) -> RouteState:
        now, provider = int(reply[0]), text(reply[1]) or None
        if provider is None:
            self._learn(domain, None, time.monotonic() + PROVIDER_TTL)
        else:
            self._learn(domain, provider, float("inf"))
        i, actions = 3, []
        for _ in range(int(reply[2])):
            rule, dest, action, value, left = reply[i : i + 5]
            actions.append(
                ActiveAction(
                    text(rule), text(dest), text(action), text(value), int(left), now + int(left)
                )
            )
            i += 5
        rates: dict[str, float] = {}
        for _ in range(int(reply[i])):
            name, rate = text(reply[i + 1]), text(reply[i + 2])
            rule = self._adaptive.get(name)  # None: a config reload removed it meanwhile
            if rule is not None:
                rates[name] = float(rate) if rate else rule.max
            i += 2
        i += 1
        days: dict[str, int] = {}
        for _ in range(int(reply[i])):
            days[text(reply[i + 1])] = int(reply[i + 2])
            i += 2
        return RouteState(now, provider, tuple(actions), rates, days)

    # -- OBTM -------------------------------------------------------------------------

    async def message(self, route: Route) -> Decision:
        """OBTM for a shaped route: refused while suspended; else the configured bucket,
        the adaptive rate, the warm-up day's rate and a ``rate`` action's share, all
        or nothing in one decision."""
        state = await self.check(route)
        base = self.outbound.throttle(OBTM_OPTION, route)
        tdefs = [  # the fall-back bucket, then any Host and Provider buckets of the route
            ThrottleDef(name=path, rate=str(rate))
            for path, rate in self.outbound.buckets(OBTM_OPTION, route)
        ]
        # Redis did not answer the check: a suspension this node saw still holds until
        # the end it was told (never longer), so a slow Redis does not lift it early
        suspended = self._seen_suspensions(route) if state is None else [
            a for a in state.actions if a.action == "suspend"
        ]  # fmt: skip
        if suspended:
            held = max(suspended, key=lambda a: a.remaining_ms)
            self.refusals[(held.rule, "suspend")] += 1
            reason = (
                f"shaping rule {held.rule}: {held.destination} suspended for "
                f"{held.remaining_ms / 1000:.3f} s more"
            )
            return Decision(False, max(1, held.remaining_ms), (), state is None, reason=reason)
        if state is not None:
            tdefs += self._extra_limits(route, state, base[1] if base else None)
        throttles = self._obtm()
        if not tdefs or throttles is None:  # no OBTM object: nothing counts messages
            return Decision(True, 0, (), degraded=state is None)
        decision = await throttles.acquire_buckets(tdefs)
        if state is None and not decision.degraded:  # shaping's limits were left out
            decision = dataclasses.replace(decision, degraded=True)
        if not decision.allowed and not decision.degraded:
            full = [n for n, left in decision.remaining if left <= 0] or [tdefs[0].name]
            if full[0].startswith(SHAPING_BUCKETS):
                self.refusals[(full[0], "rate")] += 1
            return Decision(
                False,
                decision.retry_after_ms,
                decision.remaining,
                reason=f"{full[0]}: rate reached",
                at_ms=decision.at_ms,
            )
        return decision

    def _bucket(self, name: str, rate: Rate) -> ThrottleDef:
        """One of shaping's own OBTM buckets (the config's keep their own deadline)."""
        return ThrottleDef(name=name, rate=str(rate), deadline_ms=self.deadline_ms)

    def _extra_limits(
        self, route: Route, state: RouteState, base: Rate | None
    ) -> list[ThrottleDef]:
        limits = []
        adaptive_rate: Rate | None = None
        for name, rate in state.rates.items():
            rule = self._adaptive[name]  # (_route_state kept only the configured ones)
            adaptive_rate = Rate(max(1, round(rate)), rule.period)
            limits.append(self._bucket(f"adaptive:{name}", adaptive_rate))
        warmups = {w.name: w for w in self.config.warmups}
        for name, day in state.days.items():
            warm = warmups.get(name)  # None: a config reload removed it meanwhile
            day_rate = warm.rate_on(day) if warm is not None else None
            if day_rate is not None:
                limits.append(self._bucket(f"warmup:{name}", day_rate))
        under = adaptive_rate or base
        for action in state.actions:
            if action.action == "rate" and under is not None:
                factor = float(action.value)
                shaped = Rate(max(1, int(under.count * factor)), under.period)
                limits.append(self._bucket(f"shaped:{action.destination}", shaped))
        return limits

    # -- connections ------------------------------------------------------------------

    async def connection_caps(self, route: Route) -> list[Cap]:
        """Caps a ``connections`` action adds to opening a connection on ``route``: every
        destination with such a rule is counted (so a cap that comes into force counts the
        connections already open), capped at the action's limit while it is in force."""
        if not self._conn_dests or not self.shaped(route):
            return []
        state = await self.check(route)
        if state is None:
            return []
        dests = self._destinations(route, state.provider)
        caps = {d: Cap(f"shaping:{d}", UNCAPPED, "shaping") for d in dests if d in self._conn_dests}
        for action in state.actions:
            if action.action == "connections" and action.destination in caps:
                limit = int(action.value)
                if limit < caps[action.destination].limit:
                    source = f"shaping rule {action.rule}"
                    caps[action.destination] = Cap(f"shaping:{action.destination}", limit, source)
        return list(caps.values())

    # -- outcomes ---------------------------------------------------------------------

    def matching(self, outcome: Outcome, provider: str | None) -> list[ShapingRule]:
        """The rules whose destination is the outcome's and whose pattern matches its reply."""
        dests = {f"domain:{outcome.domain.casefold().rstrip('.')}"}
        if outcome.host:
            dests.add(f"host:{outcome.host.casefold().rstrip('.')}")
        if provider:
            dests.add(f"provider:{provider}")
        reply = outcome.reply
        return [r for r in self.config.rules if str(r.dest) in dests and r.pattern.search(reply)]

    async def outcome(self, outcome: Outcome) -> OutcomeResult:
        """Record one delivery attempt: the audit metrics, AIMD counts and response rules."""
        outcome.checked()
        self.stats.outcomes += 1
        counted = self._count(outcome)
        route = Route(outcome.binding, outcome.domain, host=outcome.host)
        _, provider = self._known_provider(route)
        rules = self.matching(outcome, provider)
        adaptive = [
            a.name
            for a in self.config.adaptive
            if str(a.dest) in (f"domain:{outcome.domain.casefold()}", f"provider:{provider}")
        ]
        if not rules and not adaptive and provider is None:
            return OutcomeResult(outcome.event, counted, provider, ())
        args: list[str | int] = [
            self.keys.base,
            self.ctx.node,
            outcome.domain.casefold(),
            provider or "",
            outcome.event[0],
            outcome.reply[:512],
            AUDIT_LENGTH,
            len(adaptive),
            *adaptive,
        ]
        for rule in rules:
            trig = rule.trigger
            args += [
                rule.name,
                str(rule.dest),
                rule.action,
                rule.value,
                round(rule.duration * 1000),
                trig.count if trig else 0,
                round(trig.period * 1000) if trig else 0,
            ]
        keys = [self.keys.providers, self.keys.active, self.keys.audit, self.keys.counts]
        reply = await self.ctx.scripts().run("shaping_outcome", keys, args)
        firings = []
        for k, rule in enumerate(rules):
            status, expires, hits = reply[1 + 3 * k : 4 + 3 * k]
            firing = RuleFiring(
                rule.name,
                str(rule.dest),
                rule.action,
                cast(Any, text(status)),
                int(expires),
                int(hits),
            )
            if firing.status == "fired":
                self.activations[(rule.name, rule.action)] += 1
                log.warning(
                    "shaping rule %s: %s %s until %d (reply %r)",
                    rule.name,
                    rule.action,
                    rule.dest,
                    firing.expires_ms,
                    outcome.reply,
                )
            firings.append(firing)
        return OutcomeResult(outcome.event, counted, provider, tuple(firings))

    def _count(self, outcome: Outcome) -> bool:
        """Count the attempt in the delivery/transfail/permfail audit metrics, when the
        config counts them (``Replicate "metrics" { parameters = "delivery;..." }``)."""
        recorder = self.audit
        if recorder is None:
            return False
        try:
            recorder.record(outcome.event, domain=outcome.domain, binding=outcome.binding)
        except AuditError:  # this event type is not counted by the config
            return False
        return True

    # -- reads and operations ---------------------------------------------------------

    async def show(self) -> ShapingState:
        """Actions in force, AIMD rates and warm-up days (``shaping show``)."""
        return await shaping_state(self.ctx.client, self.keys, self.config)

    async def history(self, rule: str | None = None, limit: int = 50) -> list[HistoryEntry]:
        return await shaping_history(self.ctx.client, self.keys, rule, limit)

    async def clear(self, rule: str, dest: str) -> bool:
        """Lift an action before its expiry (``shaping clear NAME DEST``)."""
        return await shaping_clear(self.ctx.client, self.keys, rule, dest, self.ctx.node)

    # -- AIMD, on the leader ------------------------------------------------------------

    async def step(self, rule: AdaptiveRule) -> tuple[float, float, int, int, bool]:
        """One AIMD step of ``rule`` (skipped by the script when one ran < every ago)."""
        args: list[str | int | float] = [
            rule.min,
            rule.max,
            rule.decrease,
            rule.increase,
            round(rule.every * 1000),
            rule.transfail_above,
            rule.name,
            str(rule.dest),
            self.ctx.node,
            AUDIT_LENGTH,
        ]
        before, after, t, n, stepped = await self.ctx.scripts().run(
            "shaping_aimd", [self.keys.aimd(rule.name), self.keys.audit], args
        )
        if stepped:
            self.stats.aimd_steps += 1
        return float(before), float(after), int(t), int(n), bool(stepped)

    async def publish(self) -> None:
        """Write this config's adaptive and warm-up rules where consoles read them."""
        mapping: dict[Any, Any] = {
            f"adaptive:{a.name}": json.dumps(a.to_json()) for a in self.config.adaptive
        }
        mapping |= {f"warmup:{w.name}": json.dumps(w.to_json()) for w in self.config.warmups}
        async with self.ctx.client.pipeline(transaction=False) as pipe:  # replace: no stale
            pipe.delete(self.keys.defs)
            if mapping:
                pipe.hset(self.keys.defs, mapping=mapping)
            await pipe.execute()

    async def run(self) -> None:
        """The leader steps every adaptive destination about every ``every`` seconds."""
        while True:  # the rules are read each turn: a config reload may change them
            if self._unpublished:
                try:
                    await self.publish()
                    self._unpublished = False
                except RETRY_ERRORS as exc:  # tried again next turn
                    log.warning("shaping: could not publish the rules: %s", exc)
                except Exception:  # never let it end the AIMD loop
                    log.exception("shaping: publishing the rules failed; trying again")
            adaptive = self.config.adaptive
            await asyncio.sleep(max(0.05, min((a.every for a in adaptive), default=10) / 10))
            if not self.ctx.is_leader():
                continue
            for rule in self.config.adaptive:
                try:
                    await self.step(rule)
                except RETRY_ERRORS as exc:
                    log.warning("AIMD step of %s interrupted: %s", rule.name, exc)
                except Exception:  # never let the leader stop adjusting for good
                    log.exception("AIMD step of %s failed; trying again", rule.name)


# -- reads shared with the console (no node needed) ---------------------------------------


async def published_config(client: Any, keys: ShapingKeys) -> ShapingConfig:
    """The adaptive and warm-up rules the nodes published (for a console without config)."""
    adaptive, warmups = [], []
    for field, raw in (await client.hgetall(keys.defs)).items():
        kind, data = text(field).partition(":")[0], json.loads(raw)
        if kind == "adaptive":
            adaptive.append(AdaptiveRule.from_json(data))
        elif kind == "warmup":
            warmups.append(WarmupRule.from_json(data))
    by_name = sorted(adaptive, key=lambda a: a.name), sorted(warmups, key=lambda w: w.name)
    return ShapingConfig((), tuple(by_name[0]), tuple(by_name[1]))


async def _redis_ms(client: Any) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def active_actions(client: Any, keys: ShapingKeys, now: int) -> tuple[ActiveAction, ...]:
    """The actions in force at ``now`` (Redis ms), soonest to end first."""
    actions = []
    # Only reads (a read-only console runs this): shaping_outcome.lua prunes the ended ones.
    for member, _ in await client.zrangebyscore(keys.active, f"({now}", "+inf", withscores=True):
        rule, _, dest = text(member).partition("\t")
        held = await client.hget(keys.act(dest), rule)
        if held is None:
            continue
        action, value, until = text(held).split("\t")
        if int(until) > now:
            actions.append(ActiveAction(rule, dest, action, value, int(until) - now, int(until)))
    return tuple(actions)


async def shaping_state(client: Any, keys: ShapingKeys, config: ShapingConfig) -> ShapingState:
    """What is in force now, read from Redis (the console needs no node for it)."""
    now = await _redis_ms(client)
    actions = await active_actions(client, keys, now)
    adaptive = []
    for aimd in config.adaptive:
        raw = {
            text(k): text(v)
            for k, v in (await client.hgetall(keys.aimd(aimd.name))).items()
            if text(k)[:2] not in ("d:", "t:", "p:")
        }
        ratio = raw.get("ratio")
        adaptive.append(
            AdaptiveState(
                aimd.name,
                str(aimd.dest),
                float(raw.get("rate") or aimd.max),
                aimd.period,
                aimd.min,
                aimd.max,
                float(ratio) if ratio else None,
                int(raw["at"]) if raw.get("at") else None,
            )
        )
    warmups = []
    for warm in config.warmups:
        start = warm.start_ms
        if start is None:
            first = await client.get(keys.warmup(warm.name))
            start = int(first) if first is not None else None
        day = None if start is None else (now - start) // 86_400_000 + 1
        rate = warm.rate_on(day) if day is not None else None
        warmups.append(
            WarmupState(warm.name, warm.binding, day, str(rate) if rate else None, start)
        )
    return ShapingState(now, actions, tuple(adaptive), tuple(warmups))


async def shaping_history(
    client: Any, keys: ShapingKeys, rule: str | None = None, limit: int = 50
) -> list[HistoryEntry]:
    """The newest entries of the shaping audit series, newest first (one rule's, or all)."""
    out: list[HistoryEntry] = []
    last = "+"
    while len(out) < limit:
        batch = await client.xrevrange(keys.audit, last, "-", count=max(limit, 100))
        if not batch:
            break
        for entry_id, fields in batch:
            f = {text(k): text(v) for k, v in fields.items()}
            if rule is None or f.get("rule") == rule:
                out.append(
                    HistoryEntry(
                        text(entry_id),
                        int(f.get("at", 0)),
                        f.get("rule", ""),
                        f.get("action", ""),
                        f.get("value", ""),
                        f.get("dest", ""),
                        f.get("node", ""),
                        f.get("reply", ""),
                        int(f.get("expires", 0)),
                    )
                )
                if len(out) >= limit:
                    break
        last = "(" + text(batch[-1][0])
    return out


async def shaping_clear(client: Any, keys: ShapingKeys, rule: str, dest: str, who: str) -> bool:
    """Lift ``rule``'s action on ``dest``; ShapingError for a malformed destination."""
    try:
        parsed = Destination.parse(dest)
    except ValueError as exc:
        raise ShapingError(str(exc)) from None
    from mcluster.store.scripts import Scripts

    done = await Scripts(client).run(
        "shaping_clear",
        [keys.active, keys.audit],
        [keys.base, rule, str(parsed), who, AUDIT_LENGTH],
    )
    return bool(done)


__all__ = ["Shaper", "ShapingKeys", "WarmupRule", "shaping_config"]
