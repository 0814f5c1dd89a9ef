"""Sentinel URLs: sentinels that need a password (``sentinel_password_file`` and friends),
the master's ``password_file``, and clear errors for options a Sentinel URL does not take."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from mcluster.store.connect.sentinel import sentinel_login
from mcluster.store.connect.url_options import RedisUrlError
from mcluster.store.connect.urls import (
    make_async_client,
    make_sync_client,
    redact_url,
    validate_redis_url,
)
from tests.helpers import until
from tests.redis_servers import RedisServer, free_port, path_redis_server
from tests.redis_tls import make_certs, start_tls_redis

MASTER = "m1"


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("socket_timeout=3", "unknown option 'socket_timeout' on a redis+sentinel:// URL"),
        ("sentinel_pasword=x", "unknown option 'sentinel_pasword'"),
        ("ssl_cert_reqs=none", "option 'ssl_cert_reqs' is not supported on redis+sentinel://"),
        ("sentinel_username=", "option 'sentinel_username' has no value"),
    ],
)
def test_unknown_sentinel_options_are_errors(query: str, problem: str) -> None:
    with pytest.raises(RedisUrlError) as info:
        validate_redis_url(f"redis+sentinel://u:hunter2@a:1/m/0?{query}")
    assert problem in str(info.value) and "hunter2" not in str(info.value)


def test_sentinel_login_options(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    assert sentinel_login({}) == {}
    assert sentinel_login({"sentinel_username": "s", "sentinel_password": "p"}) == {
        "username": "s",
        "password": "p",
    }
    assert sentinel_login({"sentinel_password_file": str(tmp_path / "pw")}) == {
        "password": "from-file"
    }
    with pytest.raises(RedisUrlError, match="not both"):
        sentinel_login({"sentinel_password": "p", "sentinel_password_file": str(tmp_path / "pw")})
    with pytest.raises(RedisUrlError, match="cannot read the Redis password file"):
        sentinel_login({"sentinel_password_file": str(tmp_path / "missing")})
    url = "redis+sentinel://a:1/m?sentinel_password=hunter2&db=1"
    assert redact_url(url) == "redis+sentinel://a:1/m?sentinel_password=***&db=1"


@pytest.fixture
def guarded_sentinel(redis_server: RedisServer, tmp_path: Path) -> Iterator[int]:
    """One sentinel with ``requirepass`` watching ``redis_server`` as master ``m1``,
    whose ACL user ``sentuser`` (password ``masterpw``) the client logs in as."""
    binary = path_redis_server()
    if binary is None:
        pytest.skip("Sentinel needs redis-server on PATH")
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "sentuser", "on", ">masterpw", "~*", "&*", "+@all")
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nrequirepass sentpw\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {redis_server.port} 1\n"
    )
    proc = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        admin.execute_command("ACL", "DELUSER", "sentuser")


async def test_sentinels_with_a_password(guarded_sentinel: int, tmp_path: Path) -> None:
    (tmp_path / "master.pw").write_text("masterpw\n")
    (tmp_path / "sentinel.pw").write_text("sentpw\n")
    base = f"redis+sentinel://sentuser@127.0.0.1:{guarded_sentinel}/{MASTER}/0"
    url = f"{base}?password_file={tmp_path / 'master.pw'}"

    async def listening() -> bool:
        try:
            with redis.Redis(port=guarded_sentinel, password="sentpw") as s:
                return bool(s.ping())
        except redis.ConnectionError:
            return False

    await until(listening, 10.0, "the sentinel answers")
    with pytest.raises(redis.RedisError, match="No master found"):  # sentinels refuse
        make_sync_client(url).ping()
    good = f"{url}&sentinel_password_file={tmp_path / 'sentinel.pw'}"
    with make_sync_client(good) as client:
        assert client.acl_whoami() == "sentuser"
    client_async = make_async_client(f"{base}?sentinel_password=sentpw&password_file="
                                     f"{tmp_path / 'master.pw'}")  # fmt: skip
    try:
        assert await client_async.acl_whoami() == "sentuser"
    finally:
        await client_async.aclose()


async def test_sentinel_and_master_over_tls(tmp_path: Path) -> None:
    """The TLS files of a Sentinel URL give TLS to the sentinel and to the master: a
    TLS-only master and a TLS-only sentinel watching it over TLS."""
    binary = path_redis_server()
    if binary is None:
        pytest.skip("Sentinel needs redis-server on PATH")
    certs = make_certs(tmp_path)
    master = start_tls_redis(certs, "adminpw")
    port = free_port()
    (tmp_path / "s").mkdir()
    conf = tmp_path / "s" / "sentinel.conf"
    conf.write_text(
        f"port 0\ntls-port {port}\nbind 127.0.0.1\ndir {tmp_path / 's'}\n"
        f"tls-cert-file {certs.cert}\ntls-key-file {certs.key}\ntls-ca-cert-file {certs.ca}\n"
        f"tls-replication yes\nsentinel monitor {MASTER} 127.0.0.1 {master.port} 1\n"
        f"sentinel auth-pass {MASTER} adminpw\n"
    )
    proc = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        url = f"redis+sentinel://:adminpw@127.0.0.1:{port}/{MASTER}/0?{certs.query()}"
        assert validate_redis_url(url) == url

        async def answers() -> bool:
            client = make_async_client(url)
            try:
                return bool(await client.ping())
            except redis.RedisError:
                return False
            finally:
                await client.aclose()

        await until(answers, 15.0, "the master answers through the TLS sentinel")
        with make_sync_client(url) as client:
            client.set("mc-tls-sentinel", b"1")
            assert client.get("mc-tls-sentinel") == b"1"
            client.delete("mc-tls-sentinel")
        plain = url.split("?")[0]  # without TLS the sentinel cannot be asked
        with pytest.raises(redis.RedisError, match="No master found"):
            make_sync_client(plain).ping()
    finally:
        proc.terminate()
        proc.wait(10)
        master.stop()
