"""TLS and ACL: agents and the console on a TLS-only Redis as the ACL user the README
documents (its exact line), and one clear line at start-up for a wrong password, a
missing permission or a key pattern that does not cover the namespace."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mcluster.store.connect.access import RedisAccessError, check_access
from mcluster.store.keys import ClusterKeys
from tests.agents import until
from tests.redis_servers import RedisServer, free_port
from tests.redis_tls import Certs, admin_client, make_certs, start_tls_redis
from tests.sentinels import UrlFarm

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "admin-Secret-1"
SECRET = "mc-Secret-9f3"


def documented_acl() -> list[str]:
    """The ACL line in README.md (``user mcluster on >PASSWORD ...``), as tokens."""
    lines = [
        line.strip().strip("`")
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.strip().strip("`").startswith("user mcluster on ")
    ]
    assert len(lines) == 1, f"README.md should hold one 'user mcluster on ...' line: {lines}"
    return lines[0].split()[1:]


def set_user(server: RedisServer, certs: Certs, name: str, rules: list[str]) -> None:
    rules = [f">{SECRET}" if r.startswith(">") else r for r in rules]
    admin_client(server, certs, ADMIN).execute_command("ACL", "SETUSER", name, "reset", *rules)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_server(certs: Certs) -> Iterator[RedisServer]:
    server = start_tls_redis(certs, ADMIN)
    set_user(server, certs, "mcluster", documented_acl()[1:])
    yield server
    server.stop()


def url_for(server: RedisServer, certs: Certs, user: str, password: str | Path) -> str:
    auth = f"password_file={password}" if isinstance(password, Path) else ""
    userinfo = f"{user}@" if auth else f"{user}:{password}@"
    return f"rediss://{userinfo}127.0.0.1:{server.port}/0?{certs.query()}" + (
        f"&{auth}" if auth else ""
    )


@pytest.fixture
async def farm(tmp_path: Path, tls_server: RedisServer, certs: Certs) -> AsyncIterator[UrlFarm]:
    farm = UrlFarm(tmp_path, redis_server=tls_server)
    farm.client_url = url_for(tls_server, certs, "default", ADMIN)
    yield farm
    tls_server.proc.poll()
    for agent in farm.agents.values():
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()
    await farm.session.close()
    if farm._client is not None:
        await farm._client.aclose()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcluster", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


async def test_agents_and_console_over_tls_as_the_documented_acl_user(
    farm: UrlFarm, tls_server: RedisServer, certs: Certs, tmp_path: Path
) -> None:
    ns = farm.namespace  # the documented line names the default namespace, mc
    rules = [r.replace("~mc:", f"~{ns}:").replace("&mc:", f"&{ns}:") for r in documented_acl()]
    set_user(tls_server, certs, "mcfarm", rules[1:])
    password_file = tmp_path / "redis.pass"
    password_file.write_text(SECRET + "\n")
    by_file = url_for(tls_server, certs, "mcfarm", password_file)
    inline = url_for(tls_server, certs, "mcfarm", SECRET)
    await farm.start("n1", redis_url=by_file, timeout=60)
    await farm.start("n2", redis_url=inline, timeout=60)
    for name in ("n1", "n2"):
        await farm.post(name, farm.events(name, 40))
    await until(farm.verdict, 30, what="views exact over TLS as the ACL user")
    farm.kill("n2")
    await until(farm.verdict, 30, what="views exact after n2 died (reaped as the ACL user)")
    done = await asyncio.to_thread(
        run_cli, "console", "--redis", by_file, "--namespace", farm.namespace, "--json",
        "-c", "shared show inbound_cidr",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"rows"' in done.stdout or "rows" in done.stdout, done.stdout
    logs = farm.logs(tail=10_000) + done.stdout + done.stderr
    assert SECRET not in logs and "Secret" not in logs


@pytest.mark.parametrize(
    ("user", "drop", "namespace", "cause"),
    [
        ("mcluster", None, "mc", "refused the login"),
        ("limited", "+hincrby", "mc", "HINCRBY"),
        ("limited", "+blpop", "mc", "blpop"),
        ("limited", None, "farm-b", "the keys farm-b:*"),
    ],
)
def test_start_up_fails_with_one_line(
    tls_server: RedisServer,
    certs: Certs,
    tmp_path: Path,
    user: str,
    drop: str | None,
    namespace: str,
    cause: str,
) -> None:
    rules = [r for r in documented_acl()[1:] if r != drop]
    if user == "limited":
        set_user(tls_server, certs, user, rules)
        url = url_for(tls_server, certs, user, SECRET)
    else:
        url = url_for(tls_server, certs, user, "wrong-Secret-2")
    conf = tmp_path / "c.conf"
    conf.write_text(f'cluster {{\n  namespace = "{namespace}"\n  Replicate "inbound_cidr" {{}}\n}}')
    for args in (
        ["agent", "--config", str(conf), "--node", "n1", "--listen", f"127.0.0.1:{free_port()}"],
        ["console", "--config", str(conf), "-c", "shared list"],
        ["manager", "--config", str(conf)],
    ):
        done = run_cli(*args, "--redis", url)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        err = done.stderr.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith("mcluster: "), err
        assert cause in err, err
        assert f"rediss://***@127.0.0.1:{tls_server.port}/0" in err, err
        assert "Secret" not in err and "Traceback" not in err, err


def test_access_probe_names_each_refused_command(any_redis: RedisServer, namespace: str) -> None:
    """The probe script on Redis 7 and 6.2: the documented rules pass, and each rule taken
    away is named; nothing of the probe is left behind."""
    admin = any_redis.client()
    rules = [r.replace("mc:*", f"{namespace}:*") for r in documented_acl()[1:]]
    rules = [f">{SECRET}" if r.startswith(">") else r for r in rules]
    url = f"redis://probe-{namespace}:{SECRET}@127.0.0.1:{any_redis.port}/0"
    keys = ClusterKeys(namespace)
    try:
        admin.execute_command("ACL", "SETUSER", f"probe-{namespace}", "reset", *rules)
        check_access(url, keys)
        assert not admin.keys(f"{namespace}:*")
        for drop in ("+hincrby", "+xadd", "+publish"):
            less = [r for r in rules if r not in (drop, "+zpopmin")]
            admin.execute_command("ACL", "SETUSER", f"probe-{namespace}", "reset", *less)
            with pytest.raises(RedisAccessError) as info:
                check_access(url, keys)
            message = str(info.value)
            assert f"refuses 2 command(s) mcluster needs on the keys {namespace}:*" in message
            named = message.split(":*: ", 1)[1].split(" (first", 1)[0].split(", ")
            assert sorted(named) == sorted([drop[1:].upper(), "ZPOPMIN"]), message
            assert SECRET not in message
            assert not admin.keys(f"{namespace}:*")
    finally:
        admin.execute_command("ACL", "DELUSER", f"probe-{namespace}")
