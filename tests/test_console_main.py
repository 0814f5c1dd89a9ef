"""``console_main``: one-shot commands, ``--json``, exit codes and one-line errors.

console_main runs its own event loop, so the tests that need nodes alive call it in a
thread (``asyncio.to_thread``) while the nodes run on the test's loop.
"""

from __future__ import annotations

import asyncio
import builtins
import json
from pathlib import Path

import pytest

from mcluster.console import console_main
from tests.redis_servers import RedisServer, free_port
from tests.test_console import CONFIG, GLOBAL_CIDR, Cluster, cluster  # noqa: F401  (fixture)

Capture = pytest.CaptureFixture[str]


async def run(
    url: str | None,
    namespace: str | None,
    command: str | None,
    *,
    json_mode: bool = False,
    node: str | None = None,
    config: str | None = None,
) -> int:
    return await asyncio.to_thread(console_main, url, config, node, command, json_mode, namespace)


async def test_json_prints_only_the_listing(
    cluster: Cluster,  # noqa: F811
    redis_server: RedisServer,
    namespace: str,
    capsys: Capture,
) -> None:
    code = await run(redis_server.url, namespace, "shared show inbound_cidr", json_mode=True)
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    expected = (await cluster.nodes["relay-0-1"].show("inbound_cidr")).to_json()
    assert json.loads(out) == expected
    assert out.count("\n") == 1


async def test_text_output(
    cluster: Cluster,  # noqa: F811
    redis_server: RedisServer,
    namespace: str,
    capsys: Capture,
) -> None:
    assert await run(redis_server.url, namespace, "cluster shared show inbound_cidr") == 0
    out, err = capsys.readouterr()
    assert (out.splitlines(), err) == (GLOBAL_CIDR, "")


async def test_node_commands(
    cluster: Cluster,  # noqa: F811
    redis_server: RedisServer,
    namespace: str,
    capsys: Capture,
) -> None:
    code = await run(redis_server.url, namespace, "nodeaddr", json_mode=True, node="relay-0-2")
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {"node": "relay-0-2", "address": "127.0.0.2:4802"}
    assert await run(redis_server.url, namespace, "cluster nodename", json_mode=True) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "mcluster: cluster nodename needs --node NAME (the node this console is attached to)\n"
    )
    assert await run(redis_server.url, namespace, "nodeaddr", node="nobody") == 2
    assert capsys.readouterr().err == (
        "mcluster: unknown node 'nobody'; cluster members: relay-0-1, relay-0-2, relay-0-3\n"
    )


@pytest.mark.parametrize(
    ("command", "code", "message"),
    [
        ("shared show inbound", 2, "unknown object 'inbound'; managed objects: inbound_cidr"),
        ("shared show inbound_cidr from x", 2, "unknown node 'x' for object 'inbound_cidr'"),
        ("cluster reset", 1, "cluster reset needs --node NAME (the member to run it in)"),
        ("cluster fly", 1, "unknown command 'cluster fly'; type 'cluster help'"),
        ("shared show inbound_cidr limit x", 1, "'limit' needs a whole number"),
    ],
)
async def test_error_exit_codes(
    cluster: Cluster,  # noqa: F811
    redis_server: RedisServer,
    namespace: str,
    capsys: Capture,
    command: str,
    code: int,
    message: str,
) -> None:
    assert await run(redis_server.url, namespace, command, json_mode=True) == code
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"mcluster: {message}")
    assert err.count("\n") == 1


async def test_url_from_env_and_namespace_from_config(
    cluster: Cluster,  # noqa: F811
    redis_server: RedisServer,
    namespace: str,
    capsys: Capture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("MCLUSTER_REDIS_URL", redis_server.url)
    conf = tmp_path / "cluster.conf"
    conf.write_text(CONFIG.replace("cluster {", f'cluster {{\n  namespace = "{namespace}"'))
    assert await run(None, None, "shared show outbound_domains", config=str(conf)) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines()[0] == "lazy, snapped gauge table 'outbound_domains', view 'global'"
    assert len(out.splitlines()) == 6


def test_config_errors_are_reported_with_their_place(tmp_path: Path, capsys: Capture) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text('cluster {\n  Replicate "inbound_cidr" { colour = "red" }\n}\n')
    assert console_main("redis://127.0.0.1:1/0", str(conf), None, "shared list", True) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"mcluster: {conf}:2:")
    assert "colour" in err
    missing = tmp_path / "missing.conf"
    assert console_main("redis://127.0.0.1:1/0", str(missing), None, "shared list", True) == 1
    assert capsys.readouterr().err.startswith(f"mcluster: {missing}: cannot read")


def test_unreachable_redis_is_one_line_without_the_password(capsys: Capture) -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    assert console_main(url, None, None, "shared list", False, "mc") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"mcluster: cannot reach Redis at {url.replace(':s3cret', '***')}")
    assert "s3cret" not in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("url", "namespace", "node", "message"),
    [
        ("http://example.com", None, None, "bad Redis URL 'http://example.com'"),
        ("redis://127.0.0.1:1/0", "bad ns!", None, "bad namespace 'bad ns!'"),
        ("redis://127.0.0.1:1/0", None, "no/slash", "bad node name 'no/slash'"),
    ],
)
def test_bad_arguments(
    capsys: Capture, url: str, namespace: str | None, node: str | None, message: str
) -> None:
    assert console_main(url, None, node, "shared list", False, namespace) == 1
    assert capsys.readouterr().err.startswith(f"mcluster: {message}")


async def test_interactive_session(
    cluster: Cluster,  # noqa: F811
    redis_server: RedisServer,
    namespace: str,
    capsys: Capture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("MCLUSTER_STATE_DIR", str(tmp_path / "state"))
    lines = iter(["cluster nodename", "shared show nope", "quit", "never read"])
    prompts: list[str] = []

    def fake_input(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(lines)

    monkeypatch.setattr(builtins, "input", fake_input)
    assert await run(redis_server.url, namespace, None, node="relay-0-3") == 0
    out, err = capsys.readouterr()
    assert prompts == ["mcluster(relay-0-3)> "] * 3
    assert out.splitlines()[0].startswith("mcluster console on redis://127.0.0.1:")
    assert out.splitlines()[1:] == ["relay-0-3"]
    assert err.splitlines() == [
        "mcluster: unknown object 'nope'; managed objects: inbound_cidr, outbound_domains, "
        "outbound_slots"
    ]
    assert (tmp_path / "state" / "console_history").exists()
