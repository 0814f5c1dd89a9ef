"""Redis URLs: the Sentinel form, TLS and password-file options, where a URL and a
namespace come from (flag > environment > config), and that passwords stay hidden."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcluster.config import parse_config
from mcluster.config.connection import configured_redis_url, resolve_namespace
from mcluster.store.connect.sentinel import SentinelUrl, parse_sentinel_url
from mcluster.store.connect.url_options import connection_options
from mcluster.store.connect.urls import (
    RedisUrlError,
    make_sync_client,
    redact_url,
    resolve_redis_url,
    validate_redis_url,
)
from tests.redis_servers import RedisServer


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        (
            "redis+sentinel://10.0.0.1:26379/mymaster",
            SentinelUrl((("10.0.0.1", 26379),), "mymaster", 0, None, None),
        ),
        (
            "redis+sentinel://app:p%40ss@a:1,b:2,[::1]:3/farm-master/4",
            SentinelUrl((("a", 1), ("b", 2), ("::1", 3)), "farm-master", 4, "app", "p@ss"),
        ),
        (
            "redis+sentinel://:pw@s1:26379/m?client_name=x",
            SentinelUrl((("s1", 26379),), "m", 0, None, "pw"),
        ),
    ],
)
def test_sentinel_urls_parse(url: str, parsed: SentinelUrl) -> None:
    assert parse_sentinel_url(url) == parsed
    assert validate_redis_url(url) == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://a:1", "no master name"),
        ("redis+sentinel://a:1/", "no master name"),
        ("redis+sentinel://a:1,b/m", "bad sentinel address 'b'"),
        ("redis+sentinel://a:0/m", "bad sentinel address 'a:0'"),
        ("redis+sentinel://u:hunter2@a:1/m/x", "bad database number 'x'"),
        ("redis://h:1/0?ssl_ca_certs=/ca.crt", "option 'ssl_ca_certs' needs a rediss:// URL"),
        ("rediss://h:1/0?ssl_ca=/ca.crt", "unknown option 'ssl_ca'"),
        ("rediss://h:1/0?ssl_certfile=", "option 'ssl_certfile' has no value"),
    ],
)
def test_bad_urls_say_what_is_wrong_without_the_password(url: str, problem: str) -> None:
    with pytest.raises(RedisUrlError) as info:
        validate_redis_url(url)
    assert problem in str(info.value)
    assert "hunter2" not in str(info.value)


def test_sentinel_urls_are_redacted() -> None:
    url = "redis+sentinel://app:hunter2@a:1,b:2/m/0"
    assert redact_url(url) == "redis+sentinel://***@a:1,b:2/m/0"


def test_password_file_from_the_url_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\nignored\n")
    url, kwargs = connection_options(f"redis://app@h:1/0?password_file={secret}&db=0")
    assert (url, kwargs) == ("redis://app@h:1/0?db=0", {"password": "s3cret"})
    monkeypatch.setenv("MCLUSTER_REDIS_PASSWORD_FILE", str(secret))
    assert connection_options("unix:///tmp/r.sock")[1] == {"password": "s3cret"}
    assert connection_options("redis://:inline@h:1/0")[1] == {}  # the URL's own wins
    with pytest.raises(RedisUrlError, match="not both"):
        connection_options(f"redis://:inline@h:1/0?password_file={secret}")
    with pytest.raises(RedisUrlError, match="cannot read the Redis password file"):
        connection_options(f"redis://h:1/0?password_file={tmp_path / 'missing'}")
    (tmp_path / "empty").write_text("")
    with pytest.raises(RedisUrlError, match="is empty"):
        connection_options(f"redis://h:1/0?password_file={tmp_path / 'empty'}")
    with pytest.raises(RedisUrlError, match="ssl_ca_certs: no such file"):
        connection_options(f"rediss://h:1/0?ssl_ca_certs={tmp_path / 'nope.crt'}")


def test_password_file_logs_in(redis_server: RedisServer, tmp_path: Path) -> None:
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "pwtest", "reset", "on", ">s3cret", "+ping")
    try:
        (tmp_path / "pw").write_text("s3cret\n")
        url = f"redis://pwtest@127.0.0.1:{redis_server.port}/0?password_file={tmp_path / 'pw'}"
        with make_sync_client(url) as client:
            assert client.ping()
    finally:
        admin.execute_command("ACL", "DELUSER", "pwtest")


def test_flag_then_environment_then_config(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(
        'cluster {\n  redis = "redis://conf:6379/0"\n  namespace = "farm-a"\n}\n', "c.conf"
    )
    monkeypatch.delenv("MCLUSTER_REDIS_URL", raising=False)
    monkeypatch.delenv("MCLUSTER_NAMESPACE", raising=False)
    configured = configured_redis_url(config)
    assert resolve_redis_url(None, configured=configured) == "redis://conf:6379/0"
    assert resolve_namespace(None, config) == "farm-a"
    assert resolve_namespace(None, None) == "mc"
    monkeypatch.setenv("MCLUSTER_REDIS_URL", "redis://env:6379/0")
    monkeypatch.setenv("MCLUSTER_NAMESPACE", "farm-b")
    assert resolve_redis_url(None, configured=configured) == "redis://env:6379/0"
    assert resolve_namespace(None, config) == "farm-b"
    assert resolve_redis_url("redis://flag:1/0", configured=configured) == "redis://flag:1/0"
    assert resolve_namespace("farm-c", config) == "farm-c"
    monkeypatch.setenv("MCLUSTER_NAMESPACE", "bad ns")
    with pytest.raises(ValueError, match=r"bad namespace 'bad ns'.*\(from MCLUSTER_NAMESPACE\)"):
        resolve_namespace(None, config)
    bad = parse_config('cluster {\n  namespace = "a b"\n}\n', "c.conf")
    monkeypatch.delenv("MCLUSTER_NAMESPACE")
    with pytest.raises(ValueError, match=r"\(from c.conf:2:3\)"):
        resolve_namespace(None, bad)
