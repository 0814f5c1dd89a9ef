"""Random sequences of failures against agent processes on a real redis-server.

Steps: record events (HTTP) on a live node, flush one node, crash a node (kill -9, and a
replacement with a new name joins), pause a node past its lease (SIGSTOP, then SIGCONT),
restart Redis empty on the same port. A settle step (and the end of every run) flushes
every live node and waits until the global view == the sum of the live nodes' views ==
what they recorded, within lease_ttl + 2 s (not counting the time the processes waited
for a CPU).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.agents import KEYS, OBJECTS, Farm, until

T = TypeVar("T")

HEARTBEAT = 0.5
LEASE_TTL = 1.5
#: Crashes, pauses and Redis restarts per run (they cost seconds each).
MAX_DISRUPTIONS = 4

EVENTS = st.lists(
    st.tuples(st.sampled_from(sorted(OBJECTS)), st.integers(0, 63), st.booleans()),
    min_size=1,
    max_size=25,
)


class FailureMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.workdir = Path(tempfile.mkdtemp(prefix="mcluster-stateful-"))
        self.farm = Farm(self.workdir, heartbeat=HEARTBEAT, lease_ttl=LEASE_TTL)
        self.replacements = 0
        self.disruptions = 0
        self.paused: tuple[str, float] | None = None  # (node, when) while one is stopped
        self.clean = True  # no step has failed: the end-of-run settle is meaningful
        self.started = time.monotonic()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def step(self, what: str) -> None:
        print(f"{time.monotonic() - self.started:7.2f}s {what}")

    @initialize(events=EVENTS)
    def start(self, events: list[tuple[str, int, bool]]) -> None:
        self.run(self.farm.start("n1", "n2", "n3"))
        self.load(events)
        self.step("started n1 n2 n3")

    def batch(self, node: str, events: list[tuple[str, int, bool]]) -> list[dict[str, Any]]:
        """Events for ``node``: -1 only on a key it holds above zero (nothing clamps)."""
        counts = {obj: dict(keys) for obj, keys in self.farm.model[node].items()}
        batch = []
        for obj, index, down in events:
            key = KEYS[obj][index % len(KEYS[obj])]
            delta = -1 if down and counts[obj].get(key, 0) > 0 else 1
            counts[obj][key] = counts[obj].get(key, 0) + delta
            batch.append({"object": obj, "key": key, "delta": delta})
        return batch

    def load(self, events: list[tuple[str, int, bool]]) -> None:
        """Unflushed events on every running node, right before a failure."""
        for node in self.farm.running():
            self.run(self.farm.post(node, self.batch(node, events)))

    def pick(self, data: st.DataObject) -> str:
        """A running node. Drawn as an index, one draw whatever is running: a draw from
        the running list itself takes as many choices as that list is long, and a list
        that differs between two runs of one example made Hypothesis fail the test as a
        flaky strategy (FlakyStrategyDefinition)."""
        nodes = self.farm.running()
        return nodes[data.draw(st.integers(0, 15), label="node") % len(nodes)]

    @rule(data=st.data(), events=EVENTS)
    def record(self, data: st.DataObject, events: list[tuple[str, int, bool]]) -> None:
        self.clean = False
        node = self.pick(data)
        self.run(self.farm.post(node, self.batch(node, events)))
        self.clean = True

    @rule(data=st.data())
    def flush(self, data: st.DataObject) -> None:
        self.clean = False
        node = self.pick(data)
        self.run(self.farm.flush(node))
        self.clean = True

    @precondition(lambda self: self.disruptions < MAX_DISRUPTIONS)
    @rule(data=st.data(), events=EVENTS)
    def crash(self, data: st.DataObject, events: list[tuple[str, int, bool]]) -> None:
        self.clean = False
        self.load(events)
        node = self.pick(data)
        self.farm.kill(node, signal.SIGKILL)
        self.replacements += 1
        new = f"r{self.replacements}"
        self.run(self.farm.start(new))
        self.disruptions += 1
        self.step(f"kill -9 {node}; {new} joined")
        self.clean = True

    @precondition(lambda self: self.disruptions < MAX_DISRUPTIONS and not self.paused)
    @rule(data=st.data(), events=EVENTS)
    def pause(self, data: st.DataObject, events: list[tuple[str, int, bool]]) -> None:
        """SIGSTOP a node (with unflushed events); the next steps run while it sleeps."""
        self.clean = False
        self.load(events)
        node = self.pick(data)
        self.farm.pause(node)
        self.paused = (node, time.monotonic())
        self.disruptions += 1
        self.step(f"SIGSTOP {node}")
        self.clean = True

    @precondition(lambda self: self.paused)
    @rule()
    def resume(self) -> None:
        """SIGCONT once the paused node is past its lease (lease_ttl + 1 s after SIGSTOP)."""
        self.clean = False
        self._resume()
        self.clean = True

    def _resume(self) -> None:
        if self.paused:
            node, since = self.paused
            time.sleep(max(0.0, since + self.farm.lease_ttl + 1.0 - time.monotonic()))
            self.farm.resume(node)
            self.paused = None
            self.step(f"SIGCONT {node} after {time.monotonic() - since:.1f} s")

    @precondition(lambda self: self.disruptions < MAX_DISRUPTIONS)
    @rule(events=EVENTS)
    def restart_redis(self, events: list[tuple[str, int, bool]]) -> None:
        self.clean = False
        self.load(events)
        self.farm.kill_redis()
        self.farm.restart_redis()
        self.disruptions += 1
        self.step("Redis restarted empty on the same port")
        self.clean = True

    @rule()
    def settle(self) -> None:
        self.clean = False
        self._settle()
        self.clean = True

    def _settle(self) -> None:
        self._resume()
        started = time.monotonic()
        bound = self.farm.lease_ttl + 2  # lease time: the CPU waits of a loaded machine aside
        self.run(until(self.farm.verdict, bound, what="settled and exact", pids=self.farm.pids()))
        keys = sum(
            len(c) for n in self.farm.members_expected() for c in self.farm.model[n].values()
        )
        self.step(f"settled in {time.monotonic() - started:.2f} s ({keys} node keys)")

    def teardown(self) -> None:
        try:
            if self.clean:
                self._settle()
        except BaseException:
            print(self.farm.logs())
            raise
        finally:
            self.run(self.farm.close())
            self.loop.close()
            shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.mark.slow
def test_random_failures_keep_views_exact() -> None:
    run_state_machine_as_test(
        FailureMachine,
        settings=settings(
            max_examples=8,
            stateful_step_count=15,
            deadline=None,
            phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: seconds a run
            suppress_health_check=list(HealthCheck),
            database=None,
        ),
    )
