"""Redis Cluster: the ``redis+cluster://`` URL, its clients, and the scripts on a real Cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio.cluster
import redis.cluster

from mcluster.agent.node import Node
from mcluster.store.connect import cluster_urls
from mcluster.store.connect.urls import (
    RedisUrlError,
    decision_client,
    make_async_client,
    make_sync_client,
    redact_url,
    validate_redis_url,
)
from mcluster.store.keys import ClusterKeys
from tests.helpers import config
from tests.redis_cluster import RedisCluster


@pytest.mark.parametrize(
    ("url", "seeds", "user", "password"),
    [
        ("redis+cluster://10.0.0.1:7000", [("10.0.0.1", 7000)], None, None),
        (
            "redis+cluster://a:7000,b.example:7001/",
            [("a", 7000), ("b.example", 7001)],
            None,
            None,
        ),
        ("redis+cluster://u:p%40ss@h:1,[::1]:2", [("h", 1), ("::1", 2)], "u", "p@ss"),
        ("REDIS+CLUSTER://:secret@h:6379", [("h", 6379)], None, "secret"),
    ],
)
def test_cluster_url_parses(
    url: str, seeds: list[tuple[str, int]], user: str | None, password: str | None
) -> None:
    assert validate_redis_url(f" {url} ") == url
    parsed = cluster_urls.parse_cluster_url(url)
    assert (list(parsed.seeds), parsed.username, parsed.password) == (seeds, user, password)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+cluster://", "is not host:port"),
        ("redis+cluster://h", "is not host:port"),
        ("redis+cluster://h:0", "no port in 1..65535"),
        ("redis+cluster://h:70000", "no port in 1..65535"),
        ("redis+cluster://h:1,", "is not host:port"),
        ("redis+cluster://h:1/0", "no database or path"),
        ("redis+cluster://h:1?x=1", "unknown option 'x' on a redis+cluster:// URL"),
        ("redis+cluster://h:1#x", "'#'"),
        ("redis+cluster://h:1?ssl_ca_certs=/c", "TLS is not supported on redis+cluster://"),
        ("redis+cluster://h:1?password_file=", "option 'password_file' has no value"),
        ("redis+cluster://u:hunter2@h:x", "no port"),
    ],
)
def test_bad_cluster_url_says_why_and_hides_the_password(url: str, why: str) -> None:
    with pytest.raises(RedisUrlError) as info:
        validate_redis_url(url)
    message = str(info.value)
    assert why in message and cluster_urls.CLUSTER_FORM in message
    assert "hunter2" not in message


def test_cluster_url_is_redacted() -> None:
    url = "redis+cluster://admin:hunter2@h1:7000,h2:7001"
    assert redact_url(url) == "redis+cluster://***@h1:7000,h2:7001"


async def test_clients_are_cluster_clients(redis_cluster: RedisCluster) -> None:
    client = make_async_client(redis_cluster.url)
    try:
        assert isinstance(client, redis.asyncio.cluster.RedisCluster)
        assert decision_client(client) is client
        await client.set("mc-test:{a}", b"1")
        assert await client.get("mc-test:{a}") == b"1"
    finally:
        await client.aclose()
    sync = make_sync_client(redis_cluster.url)
    try:
        assert isinstance(sync, redis.cluster.RedisCluster)
        assert sync.get("mc-test:{a}") == b"1"
        sync.delete("mc-test:{a}")
    finally:
        sync.close()


async def test_objects_land_on_different_masters(
    redis_cluster: RedisCluster, namespace: str
) -> None:
    """The objects of a farm spread over the masters; each object's keys stay on one."""
    keys = ClusterKeys(namespace)
    names = ("inbound_cidr", "outbound_domains", "outbound_binding_domains")
    masters = {redis_cluster.node_of(keys.object(n).views).port for n in names}
    masters.add(redis_cluster.node_of(keys.members).port)
    assert len(masters) > 1
    async with Node(config(), "relay-0-1", redis_cluster.url, namespace=namespace) as node:
        node.record("inbound_cidr", "10.0.0.1", 2)
        node.record("outbound_domains", "aol.com", 3)
        await node.flush()
        assert await node.count("inbound_cidr", "10.0.0.0/8") == 2
        assert await node.count("outbound_domains", "aol.com") == 3
        for name in names:
            master = redis_cluster.node_of(keys.object(name).views).client()
            assert master.hlen(keys.object(name).views) == 1  # the key lives where routed


async def test_documented_acl_line_works_on_cluster(
    redis_cluster: RedisCluster, namespace: str
) -> None:
    """docs/redis.md's ACL line plus its Cluster extras is enough for a node on a Cluster."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "redis.md").read_text()
    line = doc.split("user mcluster on >PASSWORD ")[1].split("\n")[0].split()
    extra = doc.split("the line above plus `")[1].split("`")[0].split()
    line = [rule.replace("~mc:*", f"~{namespace}:*").replace("&mc:*", f"&{namespace}:*")
            for rule in line]  # fmt: skip
    for node in redis_cluster.live():
        node.client().acl_setuser(f"u{namespace}", enabled=True, reset=True)
        node.client().execute_command("ACL", "SETUSER", f"u{namespace}", "on", ">pw", *line, *extra)
    url = redis_cluster.url.replace("redis+cluster://", f"redis+cluster://u{namespace}:pw@")
    async with Node(config(), "relay-0-1", url, namespace=namespace) as node:
        node.record("inbound_cidr", "10.0.0.1", 2)
        node.record("outbound_domains", "aol.com", 1)
        await node.flush()
        assert await node.count("inbound_cidr", "10.0.0.0/8") == 2
        assert await node.count("outbound_domains", "aol.com") == 1


async def test_password_file_applies_to_cluster_urls(
    redis_cluster: RedisCluster, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``?password_file=`` (and $MCLUSTER_REDIS_PASSWORD_FILE) log in to every node."""
    user = f"u{namespace}"
    for node in redis_cluster.live():
        node.client().execute_command("ACL", "SETUSER", user, "on", ">s3cret", "~*", "&*", "+@all")
    try:
        (tmp_path / "pw").write_text("s3cret\n")
        (tmp_path / "bad").write_text("wrong\n")
        seeds = redis_cluster.url.removeprefix("redis+cluster://")
        url = f"redis+cluster://{user}@{seeds}?password_file={tmp_path / 'pw'}"
        assert validate_redis_url(url) == url
        sync = make_sync_client(url)
        try:
            key = f"{namespace}:{{pw}}"
            sync.set(key, b"1")
            assert sync.acl_whoami() == user
        finally:
            sync.close()
        async_client = make_async_client(url)
        try:
            assert await async_client.get(key) == b"1"
        finally:
            await async_client.aclose()
        monkeypatch.setenv("MCLUSTER_REDIS_PASSWORD_FILE", str(tmp_path / "pw"))
        async with Node(config(), "relay-0-1", f"redis+cluster://{user}@{seeds}",
                        namespace=namespace) as node:  # fmt: skip
            node.record("outbound_domains", "aol.com", 2)
            await node.flush()
            assert await node.count("outbound_domains", "aol.com") == 2
        monkeypatch.setenv("MCLUSTER_REDIS_PASSWORD_FILE", str(tmp_path / "bad"))
        with pytest.raises((redis.exceptions.RedisError, redis.exceptions.RedisClusterException)):
            make_sync_client(f"redis+cluster://{user}@{seeds}").ping()
    finally:
        for node in redis_cluster.live():
            node.client().execute_command("ACL", "DELUSER", user)
