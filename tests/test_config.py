"""Tests of the config layer: grammar, models, examples and ``config check``."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from mcluster.config import (
    REPLICATION_TYPES,
    ClusterConfig,
    ConfigError,
    ConfigIssue,
    DictValue,
    ListValue,
    Option,
    OptionMap,
    Pos,
    ReplicateObject,
    Scope,
    String,
    Word,
    check_command,
    format_tree,
    load_config,
    parse,
    parse_config,
)
from mcluster.security.config_limits import MAX_SCOPE_DEPTH

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "config" / "examples").glob("*.conf"))

# name -> (type, parameters) of every object, per example file.
EXPECTED_EXAMPLES: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "replication.conf": {
        "inbound_cidr": ("inbound_cidr", ()),
        "outbound_cidr": ("outbound_cidr", ()),
        "outbound_domains": ("outbound_domains", ()),
        "outbound_binding_domains": ("outbound_binding_domains", ()),
        "shared_named_throttles": ("shared_named_throttles", ()),
    },
    "inbound_audit.conf": {"metrics": ("metrics", ("connect", "reception", "rejection"))},
    "named_audit_series.conf": {"metrics": ("metrics", ("audit_series",))},
    "cache.conf": {"mycache": ("cache", ())},
    "cache_snapshot.conf": {"mycache": ("cache", ("snapshot",))},
    "shared_named_throttles.conf": {"shared_named_throttles": ("shared_named_throttles", ())},
    "shared_outbound_throttles.conf": {"OBTM": ("OBTM", ()), "OBTC": ("OBTC", ())},
    "gauge_cache.conf": {"metrics": ("metrics", ("gauge_cache",))},
    "class_binding_group.conf": {
        "outbound_cidr": ("outbound_cidr", ()),
        "outbound_cidr_foo": ("outbound_cidr", ()),
        "outbound_domains_foo": ("outbound_domains", ()),
    },
}


def _objects(config: ClusterConfig) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {o.name: (o.type, o.parameters) for o in config.objects}


# --- examples -----------------------------------------------------------------


def test_every_example_is_listed() -> None:
    assert {p.name for p in EXAMPLES} == set(EXPECTED_EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_parses(path: Path) -> None:
    config = load_config(path)
    assert config.source == str(path)
    assert _objects(config) == EXPECTED_EXAMPLES[path.name]
    for obj in config.objects:
        assert obj.source.startswith(f"{path}:")


def test_reference_comment_lines_kept_verbatim() -> None:
    texts = [p.read_text() for p in EXAMPLES]
    assert any("  # ... other cluster config ...\n" in t for t in texts)
    assert any("  # ... other cluster configuration ...\n" in t for t in texts)
    assert '  Replicate "OBTM" {}   # outbound message throttles\n' in "".join(texts)


def test_example_details() -> None:
    by_name = {p.name: load_config(p) for p in EXAMPLES}
    assert by_name["inbound_audit.conf"].audit_monitors == ((300, 6),)
    assert by_name["cache.conf"].datasources == ("mycache",)
    foo = by_name["class_binding_group.conf"].object("outbound_cidr_foo")
    assert (foo.type, foo.class_, foo.binding_group) == ("outbound_cidr", "outbound_cidr", "foo")
    datasource = by_name["cache.conf"].tree.scope("Datasource", "mycache")
    assert datasource is not None
    assert datasource.get("serialized") == Option("serialized", Word("true", _P), _P)


def test_default_demo_config() -> None:
    config = load_config(ROOT / "config" / "mcluster.conf")
    assert set(config.names) == {
        "inbound_cidr",
        "outbound_cidr",
        "outbound_domains",
        "outbound_binding_domains",
        "shared_named_throttles",
    }
    assert config.get_float("heartbeat_interval", 5.0, above=0) == 1.0
    assert config.get_str("namespace", "x") == "mc"
    kinds = {s.kind for s in config.tree.scopes()}
    assert {"ESMTP_Listener", "Domain"} <= kinds


# --- models -------------------------------------------------------------------

_P = Pos("t", 1, 1)


def test_defaults() -> None:
    obj = parse_config('cluster { Replicate "inbound_cidr" {} }').object("inbound_cidr")
    assert (obj.max_delay, obj.max_pending, obj.max_size) == (1.0, 100, -1)
    assert (obj.parameters, obj.binding_group, obj.class_) == ((), None, None)
    assert obj.source == "<string>:1:11"


def test_all_options_quoted_or_bare() -> None:
    text = """
    Datasource "c" {}
    cluster {
      Replicate "c" {
        type = cache
        parameters = "snapshot ; ;snapshot"
        max_delay = "0.25"
        max_pending = 7
        max_size = "1000"
      }
      Replicate "d" { type = "outbound_domains" binding_group = grp max_size = -1 }
    }
    """
    config = parse_config(text)
    c = config.object("c")
    assert (c.type, c.parameters, c.max_delay, c.max_pending, c.max_size) == (
        "cache",
        ("snapshot",),
        0.25,
        7,
        1000,
    )
    assert config.object("d").binding_group == "grp"


def test_parameters_as_list() -> None:
    config = parse_config(
        'cluster { Replicate "metrics" { parameters = ("connect;delivery", transfail) } }'
    )
    assert config.object("metrics").parameters == ("connect", "delivery", "transfail")


def test_class_gives_type_and_type_wins() -> None:
    text = """cluster {
      Replicate "outbound_cidr_foo" { class = "outbound_cidr" binding_group = "foo" }
      Replicate "weird" { type = "OBTC" class = "obtm" }
    }"""
    config = parse_config(text)
    assert config.object("outbound_cidr_foo").type == "outbound_cidr"
    weird = config.object("weird")
    assert (weird.type, weird.class_) == ("OBTC", "OBTM")
    assert weird.model_dump()["class"] == "OBTM"
    assert config.of_type("obtc") == (weird,)


def test_case_insensitive_keys_scopes_and_types() -> None:
    text = """CLUSTER {
      replicate "obtm" {}
      REPLICATE "x" { TYPE = "Outbound_CIDR" Parameters = "Connect" MAX_PENDING = 5 }
      Heartbeat = 2
    }
    DATASOURCE "C" {}
    Cluster_Other { }
    """
    config = parse_config(text)
    assert config.object("obtm").type == "OBTM"
    assert config.object("OBTM").name == "obtm"
    x = config.object("x")
    assert (x.type, x.parameters, x.max_pending) == ("outbound_cidr", ("connect",), 5)
    assert config.options["heartbeat"] == 2
    assert list(config.options) == ["Heartbeat"]
    assert config.get_int("HEARTBEAT", 1) == 2


def test_cache_datasource_match_is_case_insensitive() -> None:
    config = parse_config(
        'Datasource "MyCache" {}\ncluster { Replicate "mycache" { type = cache } }'
    )
    assert config.object("mycache").type == "cache"


def test_no_cluster_scope_is_valid() -> None:
    config = parse_config('Domain "example.com" { a = 1 }\n')
    assert config.objects == ()
    assert config.audit_monitors == ()
    assert config.options == {}


def test_empty_file() -> None:
    config = parse_config("", "empty.conf")
    assert config.objects == ()
    assert config.tree == Scope("", None, (), _P)
    assert config.source == "empty.conf"


def test_object_lookup_error_lists_names() -> None:
    config = parse_config('cluster { Replicate "OBTM" {} Replicate "OBTC" {} }')
    with pytest.raises(KeyError, match='no replicated object "nope"; defined: OBTM, OBTC'):
        config.object("nope")


def test_cluster_options_are_plain_values() -> None:
    text = """cluster {
      heartbeat = 1
      lease_ttl = "3"
      ratio = 1.5
      enabled = true
      namespace = "mc"
      peers = ("a" b)
      logs = [ mainlog = "cluster:///var/log/mainlog=>master", n = 2 ]
      Replicate "inbound_cidr" {}
      DuraVIP { view_mature_time = 5 }
    }"""
    config = parse_config(text)
    opts = config.options
    assert isinstance(opts, OptionMap)
    assert opts["heartbeat"] == 1
    assert opts["lease_ttl"] == "3"
    assert opts["ratio"] == 1.5
    assert opts["enabled"] is True
    assert opts["peers"] == ("a", "b")
    assert opts["logs"]["MAINLOG"] == "cluster:///var/log/mainlog=>master"
    assert config.get_int("lease_ttl", 9, minimum=1) == 3
    assert config.get_float("ratio", 0.0, above=0) == 1.5
    assert config.get_bool("enabled", False) is True
    assert config.get_int("missing", 42) == 42
    assert config.option_source("namespace") == "<string>:6:7"
    assert config.model_dump()["options"]["logs"] == {
        "mainlog": "cluster:///var/log/mainlog=>master",
        "n": 2,
    }
    with pytest.raises(TypeError):
        opts["x"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "call", "message"),
    [
        (
            "cluster { heartbeat = x }",
            lambda c: c.get_int("heartbeat", 1),
            'heartbeat must be an integer, got "x"',
        ),
        (
            "cluster { heartbeat = 0 }",
            lambda c: c.get_int("heartbeat", 1, minimum=1),
            'heartbeat must be an integer >= 1, got "0"',
        ),
        (
            "cluster { t = 0 }",
            lambda c: c.get_float("t", 1.0, above=0),
            't must be a number > 0, got "0"',
        ),
        (
            "cluster { b = maybe }",
            lambda c: c.get_bool("b", True),
            'b must be true or false, got "maybe"',
        ),
        (
            "cluster { s = (1) }",
            lambda c: c.get_str("s", ""),
            "s must be a single value, got a list (1)",
        ),
    ],
)
def test_typed_option_getters_report_positions(
    text: str, call: Callable[[ClusterConfig], object], message: str
) -> None:
    config = parse_config(text, "c.conf")
    with pytest.raises(ConfigError) as info:
        call(config)
    assert str(info.value) == f"c.conf:1:11: {message}"


def test_audit_monitors() -> None:
    config = parse_config('inbound_audit { monitors = ("300,6" "1800,4") }\n')
    assert config.audit_monitors == ((300, 6), (1800, 4))
    single = parse_config('inbound_audit "inbound_audit1" { monitors = " 60 , 2 " }')
    assert single.audit_monitors == ((60, 2),)


def test_models_are_frozen_and_validated() -> None:
    obj = ReplicateObject(name="x", type="OBTM")
    with pytest.raises(ValueError):
        obj.name = "y"
    with pytest.raises(ValueError):
        ReplicateObject(name="x", type="bogus")
    with pytest.raises(ValueError):
        ReplicateObject(name="x", type="cache", max_size=0)
    with pytest.raises(ValueError):
        ReplicateObject(name="x", type="metrics", parameters=("nope",))
    assert (
        ReplicateObject.model_validate({"name": "x", "type": "OBTC", "class": "OBTC"}).class_
        == "OBTC"
    )
    assert "OBTM" in REPLICATION_TYPES


def test_unknown_scopes_nested_are_kept() -> None:
    text = """
    ESMTP_Listener {
      Listen ":25" {
        Peer "10.0.0.0/8" { Relay_Hosts = ("127.0.0.1", "10.0.0.0/8") }
        Enable_Duravip = true
      }
    }
    cluster { Replicate "inbound_cidr" {} }
    """
    config = parse_config(text, "x.conf")
    listener = config.tree.scope("esmtp_listener")
    assert listener is not None and listener.kind == "ESMTP_Listener"
    listen = listener.scope("Listen", ":25")
    assert listen is not None and listen.pos == Pos("x.conf", 3, 7)
    peer = listen.scope("peer")
    assert peer is not None and peer.name == "10.0.0.0/8"
    hosts = peer.get("relay_hosts")
    assert hosts is not None
    assert hosts.value == ListValue((String("127.0.0.1", _P), String("10.0.0.0/8", _P)), _P)
    assert hosts.value_pos == Pos("x.conf", 4, 43)
    assert [s.kind for _, s in config.tree.walk()] == [
        "ESMTP_Listener",
        "Listen",
        "Peer",
        "cluster",
        "Replicate",
    ]


# --- grammar ------------------------------------------------------------------


def test_values_lists_dicts_comments() -> None:
    text = r"""# leading comment
a = "x \"q\" \\ \n\t end" # trailing comment
b = 30
c = ( "one", two 3 , )
d = [ k = v, "quoted key" = ("n" [ deep = 1 ]) other = "2" ]
e = ()
f = []
g = /var/log/x#not part of the word
"""
    tree = parse(text, "v.conf")
    items = {o.key: o for o in tree.options()}
    assert items["a"].value == String('x "q" \\ \n\t end', _P)
    assert items["b"].value == Word("30", _P)
    assert items["b"].pos == Pos("v.conf", 3, 1)
    assert items["b"].value_pos == Pos("v.conf", 3, 5)
    assert items["e"].value == ListValue((), _P)
    assert items["f"].value == DictValue((), _P)
    assert items["g"].value == Word("/var/log/x", _P)
    d = items["d"].value
    assert isinstance(d, DictValue)
    assert [e.key for e in d.entries] == ["k", "quoted key", "other"]
    assert d.get("QUOTED KEY") is not None
    assert d.get("missing") is None


def test_bad_list_with_double_comma_rejected() -> None:
    # A second comma in a row is not a value (only one separator per item).
    with pytest.raises(ConfigError) as info:
        parse("c = ( one ,, two )", "l.conf")
    assert (
        str(info.value) == 'l.conf:1:12: expected a value or ")" in the list opened at 1:5, got ","'
    )


def test_positions_ignore_in_equality_but_kept() -> None:
    a = parse("x { y = 1 }", "a")
    b = parse("\n\n   x {\n y =\n 1 }", "b")
    assert a == b
    assert a.scopes()[0].pos == Pos("a", 1, 1)
    assert b.scopes()[0].pos == Pos("b", 3, 4)


def test_scope_nesting_depth_is_capped() -> None:
    """Issue 18: scopes nest at most MAX_SCOPE_DEPTH (tests/test_security_config.py)."""
    depth = MAX_SCOPE_DEPTH
    tree = parse("a {\n" * depth + "}\n" * depth, "deep")
    assert sum(1 for _ in tree.walk()) == depth
    with pytest.raises(ConfigError, match=f"deep:{depth + 1}:1: scopes nest deeper than"):
        parse("a {\n" * (depth + 1) + "}\n" * (depth + 1), "deep")


def test_format_tree_round_trip_of_real_file() -> None:
    tree = load_config(ROOT / "config" / "mcluster.conf").tree
    assert parse(format_tree(tree)) == tree


def test_crlf_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "win.conf"
    path.write_bytes(b'\xef\xbb\xbfcluster {\r\n  Replicate "OBTM" {}\r\n}\r\n')
    config = load_config(path)
    assert config.object("OBTM").source == f"{path}:2:3"


# --- errors -------------------------------------------------------------------

CLUSTER_HEAD = 'cluster {\n  Replicate "inbound_cidr" {\n'
TYPES = (
    "cache, inbound_cidr, outbound_cidr, outbound_domains, outbound_binding_domains, "
    "OBTM, OBTC, shared_named_throttles, metrics, eccmgr_metrics"
)
MONITORS = 'monitors entry must be "SECONDS,WINDOWS" (two integers >= 1), got'
OPTIONS = "parameters, type, max_delay, max_pending, max_size, binding_group, class, shards"
PARAMS = (
    "snapshot, connect, delivery, transfail, permfail, reception, rejection, "
    "audit_series, gauge_cache"
)


def _stanza(line: str) -> str:
    return f"{CLUSTER_HEAD}    {line}\n  }}\n}}\n"


BROKEN: list[tuple[str, str, str]] = [
    # (id, text, expected str(ConfigError)) -- file name is always mcluster.conf
    (
        "unclosed-scope",
        'cluster {\n  Replicate "x" {}\n',
        'mcluster.conf:3:1: expected "}" to close scope "cluster" opened at 1:1, got end of file',
    ),
    (
        "unclosed-named-scope",
        'cluster {\n  Replicate "OBTM" {\n}\n',
        'mcluster.conf:4:1: expected "}" to close scope "cluster" opened at 1:1, got end of file',
    ),
    (
        "unclosed-inner",
        'Domain "a" {\n  Peer "1.2.3.4" {\n',
        'mcluster.conf:3:1: expected "}" to close scope Peer "1.2.3.4" opened at 2:3, got end of '
        "file",
    ),
    (
        "stray-brace",
        "cluster {\n}\n}\n",
        'mcluster.conf:3:1: expected an option or a scope, got "}" (no scope is open)',
    ),
    (
        "missing-equals",
        "cluster {\n  heartbeat 1\n}\n",
        'mcluster.conf:2:13: expected "=" or "{" after "heartbeat", got "1"',
    ),
    (
        "missing-value",
        "cluster {\n  heartbeat =\n}\n",
        'mcluster.conf:3:1: expected a value for "heartbeat", got "}"',
    ),
    (
        "scope-name-without-brace",
        'Domain "x" = 1\n',
        'mcluster.conf:1:12: expected "{" to open scope Domain "x", got "="',
    ),
    (
        "string-as-key",
        '"x" = 1\n',
        'mcluster.conf:1:1: expected an option or a scope, got string "x"',
    ),
    (
        "unterminated-string",
        'cluster {\n  namespace = "mc\n}\n',
        "mcluster.conf:2:18: expected '\"' to close the string opened at 2:15, got end of line",
    ),
    (
        "unterminated-string-eof",
        'a = "abc\\"',
        "mcluster.conf:1:11: expected '\"' to close the string opened at 1:5, got end of file",
    ),
    (
        "bad-list-token",
        'cluster {\n  peers = ("a" = "b")\n}\n',
        'mcluster.conf:2:16: expected a value or ")" in the list opened at 2:11, got "="',
    ),
    (
        "unclosed-list",
        'inbound_audit {\n  monitors = ("300,6"\n}\n',
        'mcluster.conf:3:1: expected a value or ")" in the list opened at 2:14, got "}"',
    ),
    (
        "bad-dict-missing-equals",
        "cluster {\n  logs = [ mainlog x ]\n}\n",
        'mcluster.conf:2:20: expected "=" after dictionary key "mainlog", got "x"',
    ),
    (
        "bad-dict-key",
        "a = [ (1) ]\n",
        'mcluster.conf:1:7: expected a key or "]" in the dictionary opened at 1:5, got "("',
    ),
    (
        "unclosed-dict",
        "a = [ k = 1\n",
        'mcluster.conf:2:1: expected "]" to close the dictionary opened at 1:5, got end of file',
    ),
    (
        "max-pending-ten",
        _stanza("max_pending = ten"),
        'mcluster.conf:3:5: max_pending must be an integer >= 1, got "ten"',
    ),
    (
        "max-pending-zero-quoted",
        _stanza('max_pending = "0"'),
        'mcluster.conf:3:5: max_pending must be an integer >= 1, got "0"',
    ),
    (
        "max-pending-float",
        _stanza("max_pending = 1.5"),
        'mcluster.conf:3:5: max_pending must be an integer >= 1, got "1.5"',
    ),
    (
        "max-delay-negative",
        _stanza("max_delay = -1"),
        'mcluster.conf:3:5: max_delay must be a number > 0, got "-1"',
    ),
    (
        "max-delay-abc",
        _stanza('max_delay = "abc"'),
        'mcluster.conf:3:5: max_delay must be a number > 0, got "abc"',
    ),
    (
        "max-delay-inf",
        _stanza("max_delay = inf"),
        'mcluster.conf:3:5: max_delay must be a number > 0, got "inf"',
    ),
    (
        "max-size-zero",
        _stanza("max_size = 0"),
        'mcluster.conf:3:5: max_size must be -1 or an integer >= 1, got "0"',
    ),
    (
        "max-size-list",
        _stanza("max_size = (1 2)"),
        "mcluster.conf:3:5: max_size must be -1 or an integer >= 1, got a list (1 2)",
    ),
    (
        "unknown-type",
        'cluster {\n  Replicate "x" {\n    type = "cidr"\n  }\n}\n',
        f'mcluster.conf:3:5: type must be one of {TYPES}, got "cidr"',
    ),
    (
        "unknown-class",
        'cluster {\n  Replicate "x" { class = outbound }\n}\n',
        f'mcluster.conf:2:19: class must be one of {TYPES}, got "outbound"',
    ),
    (
        "name-not-a-type",
        'cluster {\n  Replicate "mystuff" {}\n}\n',
        'mcluster.conf:2:3: Replicate "mystuff" has no type: its name is not a replication type '
        f"and neither type nor class is set (expected one of {TYPES})",
    ),
    (
        "unknown-parameter",
        _stanza('parameters = "connect;recption"'),
        f'mcluster.conf:3:5: unknown parameter "recption" in parameters: expected any of {PARAMS}',
    ),
    (
        "unknown-option",
        _stanza("max_pendng = 5"),
        'mcluster.conf:3:5: unknown option "max_pendng" in Replicate "inbound_cidr": expected '
        f"one of {OPTIONS}",
    ),
    (
        "scope-inside-replicate",
        _stanza("Extra {}"),
        'mcluster.conf:3:5: unexpected scope "Extra" in Replicate "inbound_cidr": '
        f"expected only options ({OPTIONS})",
    ),
    (
        "duplicate-option",
        _stanza("max_delay = 1 max_delay = 2"),
        'mcluster.conf:3:19: duplicate option "max_delay" in Replicate "inbound_cidr": '
        "first set at mcluster.conf:3:5",
    ),
    (
        "duplicate-object",
        'cluster {\n  Replicate "OBTM" {}\n  Replicate "obtm" {}\n}\n',
        'mcluster.conf:3:3: duplicate Replicate "obtm": first defined at mcluster.conf:2:3',
    ),
    (
        "duplicate-cluster-option",
        "cluster {\n  heartbeat = 1\n  Heartbeat = 2\n}\n",
        'mcluster.conf:3:3: duplicate option "Heartbeat" in the cluster scope: '
        "first set at mcluster.conf:2:3",
    ),
    (
        "duplicate-cluster-scope",
        "cluster {}\ncluster {}\n",
        "mcluster.conf:2:1: duplicate cluster scope: first defined at mcluster.conf:1:1",
    ),
    (
        "cache-without-datasource",
        'Datasource "other" {}\n\ncluster {\n  # ... other cluster configuration ...\n'
        '  heartbeat = 1\n\n\n\n  Replicate "mycache" {\n    type = "cache"\n  }\n}\n',
        'mcluster.conf:9:3: Replicate "mycache" has type "cache" but no Datasource "mycache" is '
        "defined",
    ),
    (
        "datasource-without-name",
        "Datasource { }\n",
        'mcluster.conf:1:1: Datasource needs a name, e.g. Datasource "mycache" { ... }',
    ),
    (
        "replicate-outside-cluster",
        'Replicate "inbound_cidr" {}\n',
        'mcluster.conf:1:1: Replicate "inbound_cidr" must be inside the cluster scope, found at '
        "the top level",
    ),
    (
        "replicate-nested-elsewhere",
        'Domain "example.com" {\n  Replicate "OBTM" {}\n}\n',
        'mcluster.conf:2:3: Replicate "OBTM" must be inside the cluster scope, '
        'found inside Domain "example.com"',
    ),
    (
        "replicate-without-name",
        "cluster {\n  Replicate {}\n}\n",
        'mcluster.conf:2:3: Replicate needs a name, e.g. Replicate "inbound_cidr" {}',
    ),
    (
        "replicate-as-option",
        'cluster {\n  replicate = [ type = "OBTM" ]\n}\n',
        'mcluster.conf:2:3: Replicate must be a scope: Replicate "name" { ... }',
    ),
    (
        "monitors-one-number",
        'inbound_audit {\n  monitors = ("300")\n}\n',
        f'mcluster.conf:2:15: {MONITORS} "300"',
    ),
    (
        "monitors-not-numbers",
        'inbound_audit {\n  monitors = ("300,6" "a,b")\n}\n',
        f'mcluster.conf:2:23: {MONITORS} "a,b"',
    ),
    (
        "monitors-zero",
        'inbound_audit {\n  monitors = "0,6"\n}\n',
        f'mcluster.conf:2:14: {MONITORS} "0,6"',
    ),
    (
        "binding-group-empty",
        _stanza('binding_group = ""'),
        'mcluster.conf:3:5: binding_group must be a binding group name, got ""',
    ),
    (
        "many-errors-together",
        'Replicate "z" {}\ncluster {\n  Replicate "inbound_cidr" {\n    max_pending = ten\n'
        '    max_delay = 0\n    colour = blue\n  }\n  Replicate "mycache" { type = cache }\n}\n'
        'inbound_audit { monitors = ("1,1" "x") }\n',
        "\n".join(
            [
                'mcluster.conf:1:1: Replicate "z" must be inside the cluster scope, found at the '
                "top level",
                'mcluster.conf:4:5: max_pending must be an integer >= 1, got "ten"',
                'mcluster.conf:5:5: max_delay must be a number > 0, got "0"',
                'mcluster.conf:6:5: unknown option "colour" in Replicate "inbound_cidr": '
                f"expected one of {OPTIONS}",
                'mcluster.conf:8:3: Replicate "mycache" has type "cache" but no Datasource '
                '"mycache" is defined',
                f'mcluster.conf:10:35: {MONITORS} "x"',
            ]
        ),
    ),
]


@pytest.mark.parametrize(("text", "expected"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_config(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "mcluster.conf")
    assert str(info.value) == expected
    assert len(info.value.issues) == expected.count("\n") + 1
    assert all(isinstance(i, ConfigIssue) and i.file == "mcluster.conf" for i in info.value.issues)


def test_issue_fields() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_stanza("max_pending = ten"), "mcluster.conf")
    assert info.value.issues == [
        ConfigIssue("mcluster.conf", 3, 5, 'max_pending must be an integer >= 1, got "ten"')
    ]


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.conf"
    path.write_bytes("cluster {\n  # café\n}\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:2:8: expected UTF-8 text, got byte 0xe9"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.conf"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"
    assert (info.value.issues[0].line, info.value.issues[0].col) == (0, 0)


def test_unreadable_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"{tmp_path}: cannot read: Is a directory"


# --- config check ---------------------------------------------------------------


def test_check_command_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_command(str(ROOT / "config" / "examples" / "class_binding_group.conf")) == 0
    out, err = capsys.readouterr()
    assert err == ""
    for word in ("outbound_cidr_foo", "outbound_domains_foo", "foo", "100", "-1", "max_pending"):
        assert word in out


def test_check_command_counts_other_scopes(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_command(str(ROOT / "config" / "mcluster.conf")) == 0
    out = capsys.readouterr().out
    # Domain (its outbound caps) and ESMTP_Listener (a Listen with Enable_Duravip) are read.
    assert "scopes used: Domain x1, ESMTP_Listener x1" in out
    assert "other scopes kept: none" in out
    assert "heartbeat_interval, lease_ttl, namespace" in out


def test_check_command_lists_every_scope_it_reads_as_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "all.conf"
    path.write_text(
        """
        cluster {
          Replicate "inbound_cidr" {}
          Shared_Throttle "t" { rate = "10/60" }
        }
        inbound_audit { monitors = ("60,5") }
        Policy { client_rates = ("32,5/60") }
        Datasource "ds" { uri = ("sqlite:/tmp/x.db") }
        Domain "example.com" { cluster_max_outbound_connections = 5 }
        Binding_Group "G" { Binding "b1" {} }
        Unknown_Scope { x = 1 }
        """
    )
    assert check_command(str(path)) == 0
    out = capsys.readouterr().out
    used = next(line for line in out.splitlines() if line.startswith("scopes used: "))
    for kind in ("inbound_audit", "Policy", "Datasource", "Domain", "Binding_Group"):
        assert f"{kind} x1" in used, out
    assert "other scopes kept (not used by mcluster): 1 (Unknown_Scope x1)" in out
    assert "Shared_Throttle" not in out.split("scopes used: ")[1].split("other scopes")[1]


def test_every_scope_kind_the_code_reads_is_listed_as_used() -> None:
    """A feature that reads a new top-level scope must add it to USED_SCOPES, or config
    check would call it unused: scan the package for the kinds it asks config trees for."""
    from mcluster.config.constants import USED_SCOPES

    asked = re.compile(
        r"""(?:\.scopes?|_child)\((?:[^()"]*,\s*)?"([A-Za-z_]+)"|\.is_\("([A-Za-z_]+)"\)"""
    )
    kinds: set[str] = set()
    for path in (ROOT / "mcluster").rglob("*.py"):
        for match in asked.finditer(path.read_text()):
            kinds.add(match[1] or match[2])
    known = {k.casefold() for k in USED_SCOPES} | {"replicate", "shared_throttle", "quota"}
    missing = sorted(k for k in kinds if k.casefold() not in known)
    assert not missing, f"add these scope kinds to USED_SCOPES in config/constants.py: {missing}"


def test_check_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.conf"
    path.write_text('cluster {\n  Replicate "[bold]x" {}\n  Replicate "OBTM" { max_size = 0 }\n}\n')
    assert check_command(str(path)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f'{path}:2:3: Replicate "[bold]x" has no type: its name is not a replication type '
        f"and neither type nor class is set (expected one of {TYPES})",
        f'{path}:3:22: max_size must be -1 or an integer >= 1, got "0"',
    ]
    assert "Traceback" not in err


def test_check_command_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_command(str(tmp_path / "x.conf")) == 1
    assert (
        capsys.readouterr().err
        == f"{tmp_path / 'x.conf'}: cannot read: No such file or directory\n"
    )
