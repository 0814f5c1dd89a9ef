"""Fuzzing what an operator types (issue 18): config text and Redis URLs. A config is
parsed and checked by every reader of it (the grammar, the models, the throttles, the
policy service and its guard, DuraVIP, logs, shaping) with no other outcome than a
config or a ConfigError naming a place; a Redis URL is accepted or refused with a
RedisUrlError, and no message or redaction ever shows its password."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from mcluster.config import ConfigError, load_config, parse_config
from mcluster.duravip.config import duravip_config
from mcluster.errors import Error
from mcluster.logs.config import log_files
from mcluster.objects.outbound import OutboundPolicy
from mcluster.objects.policy import policy_config
from mcluster.objects.throttle import config_throttles
from mcluster.security.clients import policy_guard
from mcluster.shaping.config import shaping_config
from mcluster.store.connect.urls import make_async_client, redact_url, validate_redis_url
from tests.fuzz import profile

READERS = (config_throttles, OutboundPolicy, policy_config, policy_guard, duravip_config,
           log_files, shaping_config)  # fmt: skip
WORDS = [
    "cluster", "Replicate", "Policy", "Quota", "Datasource", "Binding", "Domain", "Listen",
    "ESMTP_Listener", "Shared_Throttle", "inbound_audit", "Shaping", "type", "max_delay",
    "max_pending", "shards", "parameters", "replicate", "client_rates", "client_rates_ipv6",
    "clients", "max_connections", "idle_timeout", "request_timeout", "on_error",
    "deadline_ms", "transaction_timeout", "key", "limit", "count", "action", "monitors",
    "Bind_Address", "Enable_Duravip", "Duravip_Preference", "namespace", "redis", "rate",
    "heartbeat_interval", "lease_ttl", "cache", "cidrtree", "inbound_cidr", "metrics",
    "outbound_domains", "true", "0", "-1", "1e999", "nan", "DUNNO", "sasl_username",
]  # fmt: skip
VALUES = ['"10.0.0.0/8"', '"::1/128"', '"24,200/60"', '"3/60"', '"5M"', '"x"', '""',
          '"300,6"', '"10.0.0.300"', "1", "0.5", "-3", '"a;b"', '"connect;reception"']  # fmt: skip
tokens = st.sampled_from(WORDS) | st.sampled_from(VALUES) | st.sampled_from(
    [*list("{}()[]=,#\n"), "\n", " ", '"', "\\", "\t"]
) | st.text(max_size=4)  # fmt: skip
texts = st.lists(tokens, max_size=60).map(" ".join)


def read_everything(text: str) -> None:
    """Parse and read ``text`` as the agent and ``config check`` do; only ConfigError."""
    try:
        config = parse_config(text, "fuzz.conf")
    except ConfigError as exc:
        assert exc.issues and all(i.file == "fuzz.conf" for i in exc.issues), exc
        return
    for reader in READERS:
        try:
            reader(config)
        except ConfigError as exc:
            assert exc.issues, reader


@profile(quick=400)
@given(text=texts)
def test_any_config_text_is_read_or_refused_with_its_place(text: str) -> None:
    read_everything(text)


@profile(quick=100)
@given(body=texts, scope=st.sampled_from(["cluster", "Policy", "Shaping", 'Binding "b"']))
def test_any_scope_body_is_read_or_refused(body: str, scope: str) -> None:
    read_everything(f"{scope} {{\n{body}\n}}\n")


@profile(quick=40)
@given(data=st.binary(max_size=200) | texts.map(str.encode))
def test_any_file_bytes_load_or_are_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.conf"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as exc:
        assert all(i.file == str(path) for i in exc.issues), exc


# -- Redis URLs --------------------------------------------------------------------------

SECRET = "S3cr3tPW"
schemes = st.sampled_from(["redis://", "rediss://", "unix://", "redis+sentinel://",
                           "redis+cluster://", "http://", "", "REDIS://"])  # fmt: skip
userinfo = st.sampled_from(["", f":{SECRET}@", f"user:{SECRET}@", f"u:{SECRET}@@",
                            f"{SECRET}@", "user@"])  # fmt: skip
hosts = st.sampled_from(["127.0.0.1", "[::1]", "host", "", "a,b", "h:1,h:2", "h:99999",
                         "h:0", "h:x", "/tmp/r.sock", "%"]) | st.text(max_size=6)  # fmt: skip
paths = st.sampled_from(["", "/", "/0", "/15", "/x", "/0/1", "/mymaster", "/mymaster/2"])
queries = st.lists(
    st.sampled_from([f"password={SECRET}", f"sentinel_password={SECRET}", "ssl_ca_certs=/x",
                     "password_file=/nonexistent", "db=1", "x=y", "&", "=", "socket_timeout=1"]),
    max_size=3,
).map(lambda q: ("?" + "&".join(q)) if q else "")  # fmt: skip
urls = st.builds(lambda *parts: "".join(parts), schemes, userinfo, hosts, paths, queries) | (
    st.text(max_size=30)
)


def _credential(url: str) -> bool:
    """Whether the secret sits where a URL carries a credential (userinfo, password=)."""
    rest = url.split("://", 1)[-1]
    return SECRET + "@" in rest or "password=" + SECRET in rest


@profile(quick=400)
@given(url=urls)
def test_any_redis_url_is_accepted_or_refused_without_its_password(url: str) -> None:
    assert SECRET not in redact_url(url) or not _credential(url), redact_url(url)
    try:
        validate_redis_url(url)
    except Error as exc:  # RedisUrlError
        assert SECRET not in str(exc), str(exc)
        return
    client: Any = None
    try:
        client = make_async_client(url)  # builds a client; connects to nothing
    except Error as exc:  # a password file that cannot be read, ...
        assert SECRET not in str(exc), str(exc)
    finally:
        del client
