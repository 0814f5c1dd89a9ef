"""docker-compose.yml and the Dockerfile: Compose accepts the file, and every command in it
is one the ``mcluster`` CLI accepts (no container engine runs here)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcluster.cli import _parser

ROOT = Path(__file__).resolve().parent.parent
NODES = ("relay-0-1", "relay-0-2", "relay-0-3")
SMTP = ("smtp-0-1", "smtp-0-2", "smtp-0-3")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The file as ``docker-compose config`` resolves it (anchors merged, checked)."""
    if shutil.which("docker-compose") is None:
        pytest.skip("the docker-compose command is absent (.ci/run installs it)")
    done = subprocess.run(
        ["docker-compose", "--project-directory", str(ROOT), "-f", "docker-compose.yml", "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def argv(service: dict[str, Any]) -> list[str]:
    """The ``mcluster`` arguments a service runs (after an entrypoint of mcluster)."""
    entrypoint = service.get("entrypoint") or ["mcluster"]
    assert entrypoint[0] == "mcluster", service
    return [*entrypoint[1:], *service.get("command", [])]


def test_the_topology(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {"redis", "console", "manager", *NODES, *SMTP}
    assert expected <= set(services), sorted(services)
    assert services["console"]["profiles"] == ["tools"]  # a one-off: compose run
    for name in (*NODES, *SMTP, "console", "manager"):
        assert services[name]["environment"]["MCLUSTER_REDIS_URL"] == "redis://redis:6379/0"
        assert services[name]["image"] == "mcluster:local"
    ports = [str(p) for s in services.values() for p in s.get("ports", [])]
    published = [p.split(":")[1] if p.count(":") == 2 else p for p in ports]  # 1.x: short form
    assert len(ports) == 7 and len(set(published)) == 7, ports  # redis, 3 agents, 3 SMTP
    assert all(p.startswith("127.0.0.1:") for p in ports), ports  # nothing on the LAN


def test_every_command_parses_with_the_cli(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        if name == "redis":
            continue
        args = _parser().parse_args(argv(service))  # exits (fails the test) on a bad flag
        if name in NODES:
            assert (args.command, args.node, args.listen) == ("agent", name, "0.0.0.0:4802")
        if name in SMTP:
            node = name.replace("smtp", "relay")
            assert (args.command, args.agent) == ("smtp", f"http://{node}:4802")
            assert node in service["depends_on"]
    assert _parser().parse_args(argv(services["console"])).watch
    assert _parser().parse_args(argv(services["manager"])).command == "manager"


def test_the_agents_api_needs_the_token_from_a_compose_secret(compose: dict[str, Any]) -> None:
    """The agents listen on 0.0.0.0 (the compose network), so each must have the token
    (without one the agent refuses to start), and so must the SMTP servers that call it;
    nothing else gets the secret."""
    assert compose["secrets"]["api_token"]["file"].endswith("/secrets/api_token")
    services = compose["services"]
    for name, service in services.items():
        sources = [s["source"] if isinstance(s, dict) else s for s in service.get("secrets", [])]
        assert sources == (["api_token"] if name in (*NODES, *SMTP) else []), name
        if name in (*NODES, *SMTP):
            assert service["environment"]["MCLUSTER_API_TOKEN_FILE"] == "/run/secrets/api_token"
    assert (ROOT / ".gitignore").read_text().count("/secrets/") == 1  # never committed


def test_the_dockerfile_copies_what_the_wheel_needs() -> None:
    text = (ROOT / "Dockerfile").read_text()
    copied = [p for line in re.findall(r"^COPY (.+) \S+$", text, re.M) for p in line.split()]
    assert {"pyproject.toml", "README.md", "mcluster", "lua_scripts", "config"} <= set(copied)
    for path in copied:
        assert (ROOT / path).exists(), path
    assert 'ENTRYPOINT ["mcluster"]' in text
    assert "config/mcluster.conf /etc/mcluster/mcluster.conf" in text
