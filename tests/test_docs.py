"""The reference docs stay true: docs/console.md's samples are what the console prints
(regenerated here by docs/gen_samples.py), every console command is documented, and
every config block of docs/config-reference.md parses."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from mcluster.config import (
    REPLICATE_OPTIONS,
    REPLICATION_PARAMETERS,
    REPLICATION_TYPES,
    ReplicateObject,
    parse_config,
)
from mcluster.console.commands import COMMANDS, MODULE_COMMANDS
from mcluster.objects.outbound import OutboundPolicy
from mcluster.objects.policy import PolicyConfig, policy_config
from mcluster.objects.throttle import ThrottleDef, config_throttles
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


async def test_doc_samples_are_what_the_console_prints(redis_server: RedisServer) -> None:
    gen = gen_samples()
    assert len(gen.doc_commands(CONSOLE_DOC.read_text())) >= 10, "console.md lost its samples"
    for path in gen.DOCS:
        doc = path.read_text()
        commands = gen.doc_commands(doc)
        assert commands, f"{path.name} has no sample blocks"
        setup = gen.SETUPS.get(path.name)
        fresh = gen.fill(doc, await gen.generate(commands, redis_server.binary, setup))
        assert doc == fresh, f"{path.name} samples are stale: run `python docs/gen_samples.py`"


def test_normalize_hides_what_varies() -> None:
    gen = gen_samples()
    a = gen.normalize("Private Name: #e12-4711#relay-0-1\nLast Heartbeat: 2.3 s ago  ")
    b = gen.normalize("Private Name: #e3-99#relay-0-1\nLast Heartbeat: 0.1 s ago")
    assert a == b and "relay-0-1" in a and not a.endswith(" ")
    frame = gen.normalize(
        "mcluster 'docs'  3 live  no leader  23:34:29 UTC\n|relay-0-1 | 1 | 0.4s |"
    )
    assert frame == gen.normalize(
        "mcluster 'docs'  3 live  no leader  01:02:03 UTC\n|relay-0-1 | 1 | 2.0s |"
    )


def test_every_console_command_is_in_the_console_doc() -> None:
    doc = CONSOLE_DOC.read_text()
    missing = [s.usage for s in (*COMMANDS, *MODULE_COMMANDS) if s.usage not in doc]
    assert not missing, f"docs/console.md does not document: {missing}"
    headings = set(re.findall(r"^## (.+)$", doc, re.M))
    implemented = [s.name for s in (*COMMANDS, *MODULE_COMMANDS) if s.implemented]
    undocumented = [n for n in implemented if not any(h in n or n in h for h in headings)]
    assert not undocumented, f"no section in docs/console.md for {undocumented}"


CONFIG_DOC = ROOT / "docs" / "config-reference.md"


def conf_blocks() -> list[str]:
    return re.findall(r"^```conf\n(.*?)^```", CONFIG_DOC.read_text(), re.M | re.S)


def test_every_conf_block_of_the_config_reference_parses() -> None:
    blocks = conf_blocks()
    assert len(blocks) >= 5, "docs/config-reference.md lost its ```conf blocks"
    for i, text in enumerate(blocks):
        config = parse_config(text, f"docs/config-reference.md block {i}")
        config_throttles(config)
        policy_config(config)
        OutboundPolicy(config)


def test_config_reference_names_every_type_option_and_parameter() -> None:
    doc = CONFIG_DOC.read_text()
    names = (*REPLICATION_TYPES, *REPLICATE_OPTIONS, *REPLICATION_PARAMETERS)
    missing = [name for name in names if f"`{name}`" not in doc]
    assert not missing, f"docs/config-reference.md does not describe: {missing}"
    examples = "\n".join(conf_blocks())
    unused = [t for t in REPLICATION_TYPES if f'"{t}"' not in examples]
    assert not unused, f"no Replicate example of types {unused}"


def test_config_reference_states_the_code_defaults() -> None:
    doc = CONFIG_DOC.read_text()
    fields = ReplicateObject.model_fields
    assert f"| `max_delay` | `{fields['max_delay'].default:g}` " in doc
    assert f"| `max_pending` | `{fields['max_pending'].default}` " in doc
    assert f"| `max_size` | `{fields['max_size'].default}` " in doc
    policy = PolicyConfig()
    assert f"| `on_error` | `{policy.on_error}` " in doc
    assert f"| `deadline_ms` | `{policy.deadline_ms}` " in doc
    assert f"| `transaction_timeout` | `{policy.transaction_timeout:g}` " in doc
    throttle = ThrottleDef(name="t", rate="1")
    assert f"| `epsilon` | `{throttle.epsilon}` " in doc
    assert f"| `mode` | `{throttle.mode}` " in doc
    assert f"| `deadline_ms` | `{throttle.deadline_ms}` " in doc


def test_readme_reference_links_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Reference\n", 1)[1].split("\n## ", 1)[0]
    links = re.findall(r"\]\((docs/[\w.-]+\.md)\)", section)
    assert {"docs/console.md", "docs/config-reference.md"} <= set(links)
    assert {"docs/http-api.md", "docs/metrics.md"} <= set(links)
    assert all((ROOT / link).is_file() for link in links), links
