"""slot_batch decides a batch exactly as the same operations sent one call each.

The script works on copies of the counts and slot records it touches and writes them once
at the end; these tests hold it to its contract by running random batches both ways, on
twin key sets of a real Redis (every supported release), and comparing every reply and
every hash afterwards. The start state includes what reaping and draining leave behind: a
record whose counts are gone, a record of another view, a view that is not live.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from mcluster.store.scripts import Scripts
from tests.redis_servers import RedisServer

VIEW = "node1:7"
CAPS = {"cap:d": 3, "cap:h": 2, "cap:p": 4}  # cap key -> limit


@pytest.fixture
async def client(any_redis: RedisServer) -> AsyncIterator[Redis]:
    redis = Redis.from_url(any_redis.url, decode_responses=True)
    yield redis
    await redis.aclose()


def keys(prefix: str) -> list[str]:
    return [f"{prefix}:{name}" for name in ("slots", "views", "g", "n", "gmeta", "nmeta")]


async def seed(redis: Redis, prefix: str, live: bool) -> None:
    slots, views, g, n, gmeta, nmeta = keys(prefix)
    if live:
        await redis.hset(views, VIEW, "1")
    # s1 holds cap:d and cap:h, counted; s2 holds cap:p, whose count was drained; s3 is
    # another view's (a re-sync made a new view since).
    await redis.hset(slots, mapping={"s1": f"{VIEW}\ncap:d\ncap:h", "s2": f"{VIEW}\ncap:p",
                                     "s3": "node1:6\ncap:d"})  # fmt: skip
    await redis.hset(g, mapping={"cap:d": 2, "cap:h": 1})  # another node holds one cap:d
    await redis.hset(n, mapping={"cap:d": 1, "cap:h": 1})
    await redis.hset(gmeta, "n", 2)
    await redis.hset(nmeta, "n", 2)


def operations(rng: random.Random, count: int) -> list[list[str]]:
    ops: list[list[str]] = []
    names = [f"s{i}" for i in range(1, 4)]
    for i in range(count):
        roll = rng.random()
        if roll < 0.4 and names:
            ops.append(["c", rng.choice(names), "0"])  # some twice, some never held
        else:
            caps = rng.sample(sorted(CAPS), rng.randint(1, 3))
            slot = f"s{10 + i}"
            names.append(slot)
            kind = "f" if roll > 0.95 else "o"
            op = [kind, slot, str(len(caps))]
            for cap in caps:
                op += [cap, str(CAPS[cap])]
            ops.append(op)
    return ops


async def state(redis: Redis, prefix: str) -> list[dict[str, str]]:
    return [await redis.hgetall(key) for key in keys(prefix)]


@pytest.mark.parametrize("live", [True, False])
@pytest.mark.parametrize("seed_", range(12))
async def test_one_batch_equals_one_call_per_operation(
    client: Redis, namespace: str, live: bool, seed_: int
) -> None:
    scripts = Scripts(client)
    ops = operations(random.Random(seed_), 40)
    batched, single = f"{namespace}:b", f"{namespace}:s"
    await seed(client, batched, live)
    await seed(client, single, live)
    replies = await scripts.run("slot_batch", keys(batched), [VIEW, *(a for op in ops for a in op)])
    one_by_one = [(await scripts.run("slot_batch", keys(single), [VIEW, *op]))[0] for op in ops]
    assert [str(r) for r in replies] == [str(r) for r in one_by_one]
    assert await state(client, batched) == await state(client, single)
    if live:  # the batch did decide something: some opens taken, some refused by a cap
        assert "" in replies and any(r in CAPS for r in replies)


async def test_a_long_batch_writes_in_chunks(client: Redis, namespace: str) -> None:
    """More records than one command can carry: unpack() is bounded (about 8,000)."""
    scripts = Scripts(client)
    await seed(client, namespace, True)
    opens = [a for i in range(9000) for a in ("o", f"x{i}", "1", "cap:big", "100000")]
    replies = await scripts.run("slot_batch", keys(namespace), [VIEW, *opens])
    assert replies == [""] * 9000
    slots, _, g, n, _, _ = keys(namespace)
    assert await client.hlen(slots) == 3 + 9000
    assert await client.hget(g, "cap:big") == "9000" == await client.hget(n, "cap:big")
    closes = [a for i in range(9000) for a in ("c", f"x{i}", "0")]
    assert await scripts.run("slot_batch", keys(namespace), [VIEW, *closes]) == [1] * 9000
    assert await client.hlen(slots) == 3 and await client.hget(g, "cap:big") is None
