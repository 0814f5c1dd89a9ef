"""The reference docs stay true: docs/console.md's samples are what the console prints
(regenerated here by docs/gen_samples.py), every console command is documented, and
every config block of docs/config-reference.md parses."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from mcluster.console.spec import COMMANDS, MODULE_COMMANDS
from tests.redis_servers import RedisServer

ROOT = Path(__file__).resolve().parents[1]
CONSOLE_DOC = ROOT / "docs" / "console.md"


def gen_samples() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_samples", ROOT / "docs" / "gen_samples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_samples"] = module
    spec.loader.exec_module(module)
    return module


async def test_console_doc_samples_are_what_the_console_prints(
    redis_server: RedisServer,
) -> None:
    gen = gen_samples()
    doc = CONSOLE_DOC.read_text()
    commands = gen.doc_commands(doc)
    assert len(commands) >= 10, "docs/console.md lost its sample blocks"
    fresh = gen.fill(doc, await gen.generate(commands, redis_server.binary))
    assert doc == fresh, "docs/console.md samples are stale: run `python docs/gen_samples.py`"


def test_normalize_hides_what_varies() -> None:
    gen = gen_samples()
    a = gen.normalize("Private Name: #e12-4711#relay-0-1\nLast Heartbeat: 2.3 s ago  ")
    b = gen.normalize("Private Name: #e3-99#relay-0-1\nLast Heartbeat: 0.1 s ago")
    assert a == b and "relay-0-1" in a and not a.endswith(" ")


def test_every_console_command_is_in_the_console_doc() -> None:
    doc = CONSOLE_DOC.read_text()
    missing = [s.usage for s in (*COMMANDS, *MODULE_COMMANDS) if s.usage not in doc]
    assert not missing, f"docs/console.md does not document: {missing}"
    headings = set(re.findall(r"^## (.+)$", doc, re.M))
    implemented = [s.name for s in (*COMMANDS, *MODULE_COMMANDS) if s.implemented]
    undocumented = [n for n in implemented if not any(h in n or n in h for h in headings)]
    assert not undocumented, f"no section in docs/console.md for {undocumented}"
