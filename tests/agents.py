"""A farm of real ``mcluster agent`` processes on one real redis-server, for failure tests.

    farm = Farm(tmp_path, heartbeat=0.5, lease_ttl=1.5)
    await farm.start("n1", "n2", "n3")
    await farm.post("n1", farm.events("n1", 5))     # HTTP; the model records what got 202
    farm.kill("n2")                                 # SIGKILL: n2's contribution leaves the model
    await until(farm.verdict, farm.lease_ttl + 1, what="global view exact")
    await farm.close()                              # kills every leftover process

Every event reaches an agent over HTTP, so the model (``Farm.model``: node -> object ->
key -> count) knows exactly what each node recorded. Decrements are only generated for a
key whose count on that node is positive, so no node ever clamps at zero and the
expected views are plain sums.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis
import redis.asyncio

from mcluster.objects.cidrtree import Row
from mcluster.objects.kinds import CIDRTREE, GAUGE_TABLE, Kind
from mcluster.store.keys import ClusterKeys, text
from tests.helpers import cpu_wait
from tests.redis_servers import RedisServer, free_port, start_redis

#: The objects every farm replicates. inbound_cidr ships every second (batches are
#: usually pending when something happens); outbound_domains ships small batches often
#: (batches are usually in flight).
OBJECTS: dict[str, Kind] = {"inbound_cidr": CIDRTREE, "outbound_domains": GAUGE_TABLE}

CONFIG = """
cluster {{
  heartbeat_interval = {heartbeat}
  lease_ttl = {lease_ttl}
  namespace = "{namespace}"
  Replicate "inbound_cidr" {{}}
  Replicate "outbound_domains" {{
    max_delay = 0.2
    max_pending = 20
  }}
{extra_cluster}}}
{extra}
"""

KEYS: dict[str, list[str]] = {
    "inbound_cidr": [f"10.{a}.{b}.{c}" for a in (0, 9) for b in (0, 7) for c in (1, 2, 130, 200)]
    + ["192.168.1.1", "2001:db8::1", "2001:db8::2", "2001:db8:1::80", "fe80::1"],
    "outbound_domains": [f"d{i}.example.com" for i in range(14)] + ["bücher.de", "a::b.org"],
}

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=20)


# -- waiting -----------------------------------------------------------------------------


@dataclass
class Verdict:
    """The answer of a check: truthy when it holds, else ``detail`` says what differs."""

    ok: bool
    detail: str = ""

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return "ok" if self.ok else self.detail


async def until(
    cond: Callable[[], Any],
    timeout: float,
    *,
    what: str = "condition",
    interval: float = 0.02,
    pids: tuple[int, ...] | None = None,
) -> float:
    """Poll ``cond`` (sync or async) until it is truthy; return the seconds it took.

    An exception from ``cond`` counts as "not yet" (a view read while an agent rejoins may
    fail); on timeout the last result or exception is in the AssertionError. With ``pids``
    (``Farm.pids()``), the seconds those processes and this one waited for a CPU are not
    counted (``tests.helpers.cpu_wait``): for bounds in lease time on a loaded machine.
    """
    start = time.monotonic()
    waited = cpu_wait(*pids) if pids is not None else 0.0
    last: object = None
    while True:
        try:
            result = cond()
            if isinstance(result, Awaitable):
                result = await result
            if result:
                break
            last = result
        except (AssertionError, aiohttp.ClientError, redis.RedisError, OSError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        starved = cpu_wait(*pids) - waited if pids is not None else 0.0
        if time.monotonic() - start - starved >= timeout:
            excluded = f" ({starved:.1f} s of CPU waits excluded)" if pids is not None else ""
            raise AssertionError(
                f"{what}: not reached within {timeout:.1f} s{excluded}; last: {last}"
            )
        await asyncio.sleep(interval)
    return time.monotonic() - start - (cpu_wait(*pids) - waited if pids is not None else 0.0)


# -- Redis on a fixed port -----------------------------------------------------------------


def start_redis_on(port: int, binary: str, timeout: float = 10.0) -> RedisServer:
    """A redis-server without persistence on ``port`` (the port of a stopped server)."""
    workdir = Path(tempfile.mkdtemp(prefix="mcluster-redis-"))
    deadline = time.monotonic() + timeout
    while True:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        server = RedisServer(binary, port, proc, workdir)
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if server.client().ping():
                    return server
            except redis.ConnectionError:
                time.sleep(0.01)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if time.monotonic() >= deadline:
            shutil.rmtree(workdir, ignore_errors=True)
            raise RuntimeError(f"could not start {binary} on port {port}")
        time.sleep(0.1)  # the port is not free yet


DROP = -1.0  # in the reply queue: swallow this reply


class RedisProxy:
    """A loopback TCP proxy to Redis that can slow chosen commands of the agents behind it.

    ``delay_command[token] = s``: a request containing ``token`` (e.g. a script's SHA1) is
    held ``s`` seconds before it reaches Redis. ``delay_reply[token] = s``: the reply to a
    request containing ``token`` (e.g. ``HEXISTS``) is held ``s`` seconds. Order on each
    connection is kept; other connections are not slowed. ``drop_reply_to = token``: Redis
    runs the next request containing ``token`` but its reply is swallowed and the client's
    connection closed (a lost reply); an error reply (NOSCRIPT) re-arms it for the retry.
    ``holding`` counts the requests and replies held at this moment.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay_command: dict[bytes, float] = {}
        self.delay_reply: dict[bytes, float] = {}
        self.delayed = 0
        self.holding = 0  # requests and replies being held right now
        self.drop_reply_to: bytes | None = None
        self.dropped = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _match(self, rules: dict[bytes, float], data: bytes) -> float:
        upper = data.upper()
        return max((s for token, s in rules.items() if token.upper() in upper), default=0.0)

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            sreader, swriter = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:  # Redis is down: the client sees its connection closed
            cwriter.close()
            return
        self._writers |= {cwriter, swriter}
        replies: asyncio.Queue[float] = asyncio.Queue()
        armed: bytes | None = None

        async def upstream() -> None:
            nonlocal armed
            while data := await creader.read(65536):
                if delay := self._match(self.delay_command, data):
                    self.delayed += 1
                    self.holding += 1
                    try:
                        await asyncio.sleep(delay)
                    finally:
                        self.holding -= 1
                if delay := self._match(self.delay_reply, data):
                    self.delayed += 1
                    replies.put_nowait(delay)
                elif self.drop_reply_to and self.drop_reply_to.upper() in data.upper():
                    replies.put_nowait(DROP)
                    armed, self.drop_reply_to = self.drop_reply_to, None
                swriter.write(data)
                await swriter.drain()

        async def downstream() -> None:
            while data := await sreader.read(65536):
                if not replies.empty():
                    delay = replies.get_nowait()
                    if delay == DROP and data.startswith(b"-"):  # NOSCRIPT: drop the retry's
                        self.drop_reply_to = armed
                    elif delay == DROP:  # Redis ran it; the client never hears
                        self.dropped += 1
                        cwriter.close()
                        swriter.close()
                        return
                    else:
                        self.holding += 1
                        try:
                            await asyncio.sleep(delay)
                        finally:
                            self.holding -= 1
                cwriter.write(data)
                await cwriter.drain()

        try:
            await asyncio.gather(upstream(), downstream())
        except (ConnectionError, OSError):
            pass
        finally:
            cwriter.close()
            swriter.close()
            self._writers -= {cwriter, swriter}


# -- agent processes -------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the agent gets SIGKILL when the test process dies, so none is ever left."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Agent:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    private_name: str = ""
    killed: bool = False
    paused: bool = False

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Alive and not stopped: it answers HTTP."""
        return not self.killed and not self.paused and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_lines(self, needle: str) -> list[str]:
        return [line for line in self.log().splitlines() if needle in line]


@dataclass
class Load:
    """Background posts to every running agent; ``latencies`` are (node, seconds, t)."""

    farm: Farm
    size: tuple[int, int] = (1, 8)
    gap: float = 0.003
    latencies: list[tuple[str, float, float]] = field(default_factory=list)
    posts: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _rng: random.Random = field(default_factory=lambda: random.Random(7))

    async def __aenter__(self) -> Load:
        self.follow()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def follow(self) -> None:
        """Start a posting task for every running agent that has none (new agents too)."""
        for name, agent in self.farm.agents.items():
            if agent.running and name not in self._tasks:
                self._tasks[name] = asyncio.create_task(self._post_loop(name))

    async def stop(self) -> None:
        self._stop.set()
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await asyncio.gather(*tasks)

    async def _post_loop(self, name: str) -> None:
        farm, agent = self.farm, self.farm.agents[name]
        while not self._stop.is_set() and not agent.killed:
            if agent.paused:
                await asyncio.sleep(0.01)
                continue
            async with farm.lock:
                if agent.running and not self._stop.is_set():
                    events = farm.events(name, self._rng.randint(*self.size), self._rng)
                    started = time.monotonic()
                    try:
                        await farm.post(name, events)
                    except (aiohttp.ClientError, TimeoutError, OSError):
                        if not agent.killed:
                            raise
                        return
                    self.latencies.append((name, time.monotonic() - started, started))
                    self.posts += 1
            await asyncio.sleep(self.gap)

    def p99(self, since: float = 0.0, until: float = float("inf")) -> float:
        values = sorted(lat for _, lat, t in self.latencies if since <= t <= until)
        if not values:
            return 0.0
        return values[min(len(values) - 1, int(0.99 * len(values)))]

    def summary(self, since: float = 0.0, until: float = float("inf")) -> str:
        values = [lat for _, lat, t in self.latencies if since <= t <= until]
        if not values:
            return "no posts"
        return (
            f"{len(values)} posts, median {statistics.median(values) * 1000:.1f} ms, "
            f"p99 {self.p99(since, until) * 1000:.1f} ms, max {max(values) * 1000:.1f} ms"
        )


class Farm:
    """Agents as processes on one Redis, a model of what each recorded, and checks."""

    def __init__(
        self,
        workdir: Path,
        *,
        heartbeat: float = 0.5,
        lease_ttl: float = 1.5,
        redis_server: RedisServer | None = None,
        seed: int = 1,
        extra_cluster: str = "",
        extra: str = "",
    ) -> None:
        self.workdir = workdir
        self.heartbeat = heartbeat
        self.lease_ttl = lease_ttl
        self.namespace = "f" + uuid.uuid4().hex[:10]
        self.keys = ClusterKeys(self.namespace)
        self.redis = redis_server or start_redis()
        #: whether ``close`` stops ``redis``: not a server given (its owner stops it)
        self.owns_redis = redis_server is None
        self.config_path = workdir / f"{self.namespace}.conf"
        self.config_path.write_text(
            CONFIG.format(
                heartbeat=heartbeat,
                lease_ttl=lease_ttl,
                namespace=self.namespace,
                extra_cluster=extra_cluster,
                extra=extra,
            )
        )
        self.agents: dict[str, Agent] = {}
        #: node -> object -> key -> count: everything each live node recorded.
        self.model: dict[str, dict[str, dict[str, int]]] = {}
        self.lock = asyncio.Lock()
        self.rng = random.Random(seed)
        self._session: aiohttp.ClientSession | None = None
        self._client: redis.asyncio.Redis | None = None
        self._dead_servers: list[RedisServer] = []
        #: members that are not agents of the farm (a manager): the checks ignore them
        self.others: set[str] = set()

    # -- plumbing --------------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=HTTP_TIMEOUT)
        return self._session

    @property
    def client(self) -> redis.asyncio.Redis:
        """A client of the farm's Redis (it reconnects after a restart)."""
        if self._client is None:
            self._client = redis.asyncio.Redis(
                host="127.0.0.1", port=self.redis.port, socket_timeout=5, socket_connect_timeout=2
            )
        return self._client

    async def close(self) -> None:
        """Kill every agent still there (SIGCONT first if stopped), stop Redis when it is
        the farm's own (``owns_redis``), clean up."""
        for agent in self.agents.values():
            if agent.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    agent.proc.send_signal(signal.SIGCONT)
                    agent.proc.kill()
                agent.proc.wait()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None
        if self.owns_redis:
            if self.redis.proc.poll() is None:
                self.redis.stop()
            shutil.rmtree(self.redis.workdir, ignore_errors=True)
        for server in self._dead_servers:
            shutil.rmtree(server.workdir, ignore_errors=True)

    def logs(self, tail: int = 60) -> str:
        """The end of every agent's log, for a failure report."""
        out = []
        for agent in self.agents.values():
            state = "killed" if agent.killed else "paused" if agent.paused else "running"
            lines = agent.log().splitlines()[-tail:]
            out.append(f"--- {agent.name} ({state}, {agent.private_name}) ---")
            out.extend(lines)
        return "\n".join(out)

    # -- agents ------------------------------------------------------------------------------

    def spawn(self, name: str, redis_url: str | None = None, args: Iterable[str] = ()) -> Agent:
        """Start agent ``name`` (on the farm's Redis, or ``redis_url``, e.g. a proxy), with
        more command-line ``args`` (e.g. ``--policy 127.0.0.1:PORT``)."""
        port = free_port()
        log_path = self.workdir / f"{self.namespace}-{name}.log"
        env = {**os.environ, "MCLUSTER_REDIS_URL": redis_url or self.redis.url}
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mcluster", "agent", "--config", str(self.config_path),
                 "--node", name, "--listen", f"127.0.0.1:{port}", *args],
                env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            )  # fmt: skip
        agent = Agent(name, port, proc, log_path)
        self.agents[name] = agent
        self.model[name] = {obj: {} for obj in OBJECTS}
        return agent

    async def start(
        self,
        *names: str,
        timeout: float = 20.0,
        redis_url: str | None = None,
        args: Iterable[str] = (),
    ) -> None:
        """Start agents and wait until every one answers /healthz with 200."""
        for name in names:
            self.spawn(name, redis_url, args)
        await asyncio.gather(*(self.wait_healthy(n, timeout) for n in names))

    async def wait_healthy(self, name: str, timeout: float = 20.0) -> str:
        agent = self.agents[name]

        async def healthy() -> bool:
            assert agent.proc.poll() is None, f"agent {name} exited:\n{agent.log()}"
            return bool(await self.health(name))

        await until(healthy, timeout, what=f"agent {name} healthy", interval=0.05)
        return agent.private_name

    async def health(self, name: str) -> dict[str, Any] | None:
        """The /healthz body (and remember the private name), or None when not 200."""
        agent = self.agents[name]
        async with self.session.get(agent.base + "/healthz") as resp:
            if resp.status != 200:
                return None
            body: dict[str, Any] = await resp.json()
        agent.private_name = str(body["private_name"])
        return body

    def running(self) -> list[str]:
        return [n for n, a in self.agents.items() if a.running]

    def pids(self) -> tuple[int, ...]:
        """The live agents and the redis-server: whose CPU waits ``until`` may leave out."""
        agents = [a.proc.pid for a in self.agents.values() if a.proc.poll() is None]
        return (*agents, self.redis.proc.pid)

    def members_expected(self) -> list[str]:
        """Nodes the model counts: started and not killed (paused ones come back)."""
        return [n for n, a in self.agents.items() if not a.killed]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> float:
        """Send ``sig`` (SIGKILL: the node and everything it recorded are gone)."""
        agent = self.agents[name]
        if sig == signal.SIGKILL:
            agent.killed = True
            self.model.pop(name, None)
        started = time.monotonic()
        agent.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            agent.proc.wait()
        return started

    def pause(self, name: str) -> None:
        agent = self.agents[name]
        agent.paused = True
        agent.proc.send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        agent = self.agents[name]
        agent.proc.send_signal(signal.SIGCONT)
        agent.paused = False

    # -- events --------------------------------------------------------------------------------

    def events(self, name: str, n: int, rng: random.Random | None = None) -> list[dict[str, Any]]:
        """``n`` random events for node ``name``: +1, or -1 on a key it holds above zero."""
        rng = rng or self.rng
        counts = {obj: dict(keys) for obj, keys in self.model[name].items()}
        out = []
        for _ in range(n):
            obj = rng.choice(list(OBJECTS))
            key = rng.choice(KEYS[obj])
            delta = -1 if counts[obj].get(key, 0) > 0 and rng.random() < 0.35 else 1
            if rng.random() < 0.1 and delta == 1:
                delta = rng.randint(2, 5)
            counts[obj][key] = counts[obj].get(key, 0) + delta
            out.append({"object": obj, "key": key, "delta": delta})
        return out

    async def post(self, name: str, events: list[dict[str, Any]]) -> None:
        """POST /v1/events; on 202 the model records them (anything else fails the test)."""
        agent = self.agents[name]
        async with self.session.post(agent.base + "/v1/events", json={"events": events}) as resp:
            body = await resp.text()
            assert resp.status == 202, f"{name}: POST /v1/events -> {resp.status} {body}"
        model = self.model.get(name)
        if model is None:  # killed (SIGKILL) while this request was answered: all lost
            return
        for event in events:
            counts = model[event["object"]]
            counts[event["key"]] = counts.get(event["key"], 0) + event["delta"]
            assert counts[event["key"]] >= 0

    async def flush(self, name: str) -> None:
        agent = self.agents[name]
        async with self.session.post(agent.base + "/v1/flush") as resp:
            assert resp.status == 200, (
                f"{name}: POST /v1/flush -> {resp.status} {await resp.text()}"
            )

    async def flush_all(self) -> None:
        await asyncio.gather(*(self.flush(n) for n in self.running()))

    # -- reads ---------------------------------------------------------------------------------

    async def listing(self, obj: str, view: str = "global", via: str | None = None) -> Any:
        """GET /v1/objects/OBJ?view=VIEW&limit=all from agent ``via`` (any running one)."""
        via = via or self.running()[0]
        url = f"{self.agents[via].base}/v1/objects/{obj}"
        async with self.session.get(url, params={"view": view, "limit": "all"}) as resp:
            assert resp.status == 200, f"GET {obj}?view={view} -> {resp.status} {await resp.text()}"
            return await resp.json()

    async def count(self, obj: str, key: str, view: str = "global", via: str | None = None) -> int:
        via = via or self.running()[0]
        url = f"{self.agents[via].base}/v1/objects/{obj}/count"
        async with self.session.get(url, params={"key": key, "view": view}) as resp:
            assert resp.status == 200, f"count {obj} {key} -> {resp.status} {await resp.text()}"
            return int((await resp.json())["count"])

    async def metric(self, name: str, sample: str) -> float:
        """One /metrics sample (name and labels, as printed) of agent ``name``; 0 when it
        does not serve that sample."""
        async with self.session.get(f"{self.agents[name].base}/metrics") as resp:
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def model_total(self, obj: str, nodes: Iterable[str] | None = None) -> dict[str, int]:
        total: dict[str, int] = defaultdict(int)
        for node in self.members_expected() if nodes is None else nodes:
            for key, value in self.model[node][obj].items():
                total[key] += value
        return {k: v for k, v in total.items() if v}

    @staticmethod
    def rows(kind: Kind, counts: dict[str, int]) -> list[dict[str, Any]]:
        return [{"key": r.key, "count": r.count} for r in kind.model_rows(counts)]

    @staticmethod
    def leaves(kind: Kind, rows: list[dict[str, Any]]) -> dict[str, int]:
        """The per-key counts inside a listing: gauge rows, or the /32 and /128 of a tree."""
        if kind is GAUGE_TABLE:
            return {r["key"]: r["count"] for r in rows}
        out = {}
        for r in rows:
            address, plen = r["key"].split("/")
            if int(plen) == (32 if "." in address else 128):
                out[address] = r["count"]
        return out

    async def membership(self, via: str | None = None) -> dict[str, str]:
        """GET /v1/membership: node -> private name of every live member."""
        via = via or self.running()[0]
        async with self.session.get(self.agents[via].base + "/v1/membership") as resp:
            assert resp.status == 200, f"GET /v1/membership -> {resp.status} {await resp.text()}"
            return {m["node"]: m["private_name"] for m in await resp.json()}

    async def leader(self) -> tuple[str, int] | None:
        raw = await self.client.get(self.keys.leader)
        if raw is None:
            return None
        name, _, token = text(raw).rpartition(" ")
        return name, int(token)

    async def member_nodes(self) -> set[str]:
        """Node names with a member record in Redis (live or not yet reaped)."""
        fields = await self.client.hkeys(self.keys.members)
        return {text(f) for f in fields if not text(f).endswith(":hb")}

    async def stream(self, obj: str) -> list[dict[str, str]]:
        """The change stream of an object: view, seq, mode of every applied batch."""
        entries = await self.client.xrange(self.keys.object(obj).stream)
        out = []
        for _, fields in entries or []:
            out.append({text(k): text(v) for k, v in list((fields or {}).items())[:3]})
        return out

    async def verdict(self, *, flush: bool = True) -> Verdict:
        """Is the cluster settled and exact? Flush every running node, then check that the
        global view == the sum of the live nodes' views == the model (rows of the full
        listings, prefix counts, meta figures), that the registered views and the member
        records are exactly those of the live nodes, and that nothing is left to reap."""
        async with self.lock:
            return await self._verdict(flush)

    async def _verdict(self, flush: bool) -> Verdict:
        nodes = self.members_expected()
        paused = [n for n in nodes if self.agents[n].paused]
        assert not paused, f"verdict asked while {paused} are stopped"
        if flush:
            await self.flush_all()
        problems: list[str] = []
        names = {}
        for node in nodes:
            body = await self.health(node)
            if body is None:
                return Verdict(False, f"{node} is not healthy")
            names[node] = body["private_name"]
        for obj, kind in OBJECTS.items():
            okeys = self.keys.object(obj)
            views = {text(k): text(v) for k, v in (await self.client.hgetall(okeys.views)).items()}
            if views != {names[n]: n for n in nodes}:
                problems.append(f"{obj}: registered views {views}, live {names}")
            reaping = await self.client.hgetall(okeys.reaping)
            if reaping:
                problems.append(f"{obj}: still reaping {reaping}")
            glob = await self.listing(obj, "global")
            expected = self.rows(kind, self.model_total(obj, nodes))
            if glob["rows"] != expected:
                problems.append(f"{obj} global: {_diff(glob['rows'], expected)}")
            summed: dict[str, int] = defaultdict(int)
            for node in nodes:
                mine = await self.listing(obj, node)
                if mine["view"] != names[node]:
                    problems.append(f"{obj} {node}: view {mine['view']}, node is {names[node]}")
                want = self.rows(kind, self.model[node][obj])
                if mine["rows"] != want:
                    problems.append(f"{obj} {node}: {_diff(mine['rows'], want)}")
                for key, value in self.leaves(kind, mine["rows"]).items():
                    summed[key] += value
                problems += _meta_problems(f"{obj} {node}", kind, mine)
            if self.leaves(kind, glob["rows"]) != dict(summed):
                problems.append(f"{obj}: global != sum of node views")
            problems += _meta_problems(f"{obj} global", kind, glob)
            if kind is CIDRTREE:
                total = self.model_total(obj, nodes)
                v4 = sum(v for k, v in total.items() if "." in k)
                v6 = sum(v for k, v in total.items() if ":" in k)
                got = (await self.count(obj, "0.0.0.0/0"), await self.count(obj, "::/0"))
                if got != (v4, v6):
                    problems.append(f"{obj}: global count 0.0.0.0/0, ::/0 = {got}, want {v4, v6}")
        members = await self.member_nodes() - self.others
        if members != set(nodes):
            problems.append(f"member records {sorted(members)}, live {sorted(nodes)}")
        membership = {n: p for n, p in (await self.membership()).items() if n not in self.others}
        if membership != names:
            problems.append(f"GET /v1/membership {membership}, live {names}")
        leases = await self.client.mget([self.keys.lease(n) for n in nodes])
        for node, lease in zip(nodes, leases, strict=True):
            if lease is None or text(lease) != names[node]:
                problems.append(f"{node}: lease {lease!r}, private name {names[node]}")
        return Verdict(not problems, "; ".join(problems))

    # -- Redis failures ------------------------------------------------------------------------

    async def flushall(self) -> None:
        await self.client.flushall()

    def kill_redis(self) -> None:
        """SIGKILL the redis-server (no persistence: its data is gone)."""
        self.redis.proc.kill()
        self.redis.proc.wait()
        self._dead_servers.append(self.redis)

    def restart_redis(self) -> None:
        """Start an empty redis-server on the same port as the killed one."""
        self.redis = start_redis_on(self.redis.port, self.redis.binary)
        self.owns_redis = True


def _diff(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> str:
    g = {r["key"]: r["count"] for r in got}
    w = {r["key"]: r["count"] for r in want}
    wrong = {k: (g.get(k), w.get(k)) for k in g.keys() | w.keys() if g.get(k) != w.get(k)}
    shown = dict(sorted(wrong.items())[:6])
    order = "" if wrong or g == w else " (same rows, other order)"
    return f"{len(wrong)} rows differ (got, want) {json.dumps(shown)}{order}"


def _meta_problems(label: str, kind: Kind, listing: dict[str, Any]) -> list[str]:
    rows = listing["rows"]
    problems = []
    if listing["total_rows"] != len(rows):
        problems.append(f"{label}: total_rows {listing['total_rows']} but {len(rows)} rows")
    leaves = len(Farm.leaves(kind, rows))
    if listing["distinct_keys"] != leaves:
        problems.append(f"{label}: distinct_keys {listing['distinct_keys']} but {leaves} keys")
    if listing["anomalies"]:
        problems.append(f"{label}: {listing['anomalies']} anomalies (nothing ever clamps)")
    return problems


__all__ = [
    "OBJECTS",
    "Agent",
    "Farm",
    "Load",
    "RedisProxy",
    "Row",
    "Verdict",
    "start_redis_on",
    "until",
]
