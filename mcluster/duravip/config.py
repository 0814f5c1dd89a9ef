"""DuraVIP addresses from the config, and the command that plumbs them.

    Binding "flowgomail-hotmail-50" {
      Bind_Address = "10.80.116.50"
      Enable_Duravip = true
      Duravip_Preference = "labrat-4"
    }
    ESMTP_Listener { Listen "10.80.116.50:25" { Enable_Duravip = true } }
    cluster {
      duravip_interface = "eth0"
      duravip_command = "/usr/local/bin/vip {action} {address} {interface}"
      duravip_command_timeout = 10
    }

Every ``Binding`` (top level or in a ``Binding_Group``) and every ``Listen`` scope with
``Enable_Duravip = true`` makes its address a DuraVIP (a ``Listen ":25"`` on every address
names none: it serves whichever DuraVIPs are plumbed). The services of an address are the
names of its bindings and listeners; nodes that disagree on them mark it UNSAFE.
"""

from __future__ import annotations

import ipaddress
import shlex
import string
from dataclasses import dataclass, field

from mcluster.config import ClusterConfig, ConfigError, ConfigIssue, Option, Pos, Scope
from mcluster.config.values import describe, parse_bool, scalar_text
from mcluster.store.keys import check_name

PLACEHOLDERS = ("action", "address", "interface")
DEFAULT_INTERFACE = "eth0"
DEFAULT_TIMEOUT = 10.0
WILDCARDS = ("", "*", "0.0.0.0", "::")


@dataclass(frozen=True)
class Service:
    """One binding or listener on a DuraVIP: ``binding:NAME`` or ``listen:IP:PORT``."""

    name: str
    preference: str | None
    pos: Pos


@dataclass(frozen=True)
class VipConfig:
    """One DuraVIP address as this node's config has it."""

    address: str
    services: tuple[Service, ...]

    @property
    def bindings(self) -> list[str]:
        """The names shown after the address, sorted (``binding:`` / ``listen:`` dropped)."""
        return sorted({s.name.split(":", 1)[1] for s in self.services})

    @property
    def preferences(self) -> list[str]:
        return sorted({s.preference for s in self.services if s.preference})


@dataclass(frozen=True)
class DuraVipConfig:
    """Every DuraVIP of one config, and how to plumb an address."""

    addresses: dict[str, VipConfig] = field(default_factory=dict)
    command: tuple[str, ...] | None = None  # None: the built-in ``ip`` command
    interface: str = DEFAULT_INTERFACE
    timeout: float = DEFAULT_TIMEOUT


def normalise(address: str) -> str:
    """An address in its canonical text (``ipaddress``): ``2001:db8::1``, never ``::0001``."""
    return str(ipaddress.ip_address(address.strip()))


def _issue(pos: Pos, message: str) -> ConfigIssue:
    return ConfigIssue(pos.file, pos.line, pos.col, message)


def _text(option: Option | None, issues: list[ConfigIssue], what: str) -> str | None:
    if option is None:
        return None
    text = scalar_text(option.value)
    if text is None:
        got = describe(option.value)
        issues.append(_issue(option.pos, f"{option.key} must be {what}, got {got}"))
    return text


def _listen_address(name: str) -> str:
    """``10.0.0.1:25``, ``[2001:db8::1]:25`` or a bare address -> the address."""
    if name.startswith("["):
        return name[1 : name.index("]")] if "]" in name else name
    host, sep, port = name.rpartition(":")
    if sep and host.count(":") == 0 and port.isdigit():
        return host
    return name


def _service(scope: Scope, issues: list[ConfigIssue]) -> tuple[str, Service] | None:
    """The (address, service) of one Binding or Listen scope with Enable_Duravip = true."""
    enable = scope.get("Enable_Duravip")
    flag = _text(enable, issues, "true or false")
    if enable is None or flag is None:
        return None
    if parse_bool(flag) is None:
        issues.append(_issue(enable.pos, f"Enable_Duravip must be true or false, got {flag!r}"))
        return None
    if not parse_bool(flag):
        return None
    preference = None
    pref = scope.get("Duravip_Preference")
    if (value := _text(pref, issues, "a node name")) is not None and pref is not None:
        try:
            preference = check_name("node", value)
        except ValueError as exc:
            issues.append(_issue(pref.pos, f"Duravip_Preference in {scope.label}: {exc}"))
    if scope.is_("Binding"):
        bind = scope.get("Bind_Address")
        raw = _text(bind, issues, "an IP address")
        if bind is None:
            issues.append(_issue(scope.pos, f"{scope.label}: Enable_Duravip needs Bind_Address"))
            return None
        pos, label = bind.pos, f"binding:{scope.name or ''}"
    else:
        raw = _listen_address(scope.name or "")
        if raw in WILDCARDS:
            return None  # a listener on every address serves whichever DuraVIPs are plumbed
        pos, label = scope.pos, f"listen:{scope.name or ''}"
    if raw is None:
        return None
    try:
        address = normalise(raw)
    except ValueError:
        why = f"DuraVIP address {raw!r} is not an IP address"
        if scope.is_("Listen"):
            why += " (a DuraVIP listener needs an IP address, e.g. 10.0.0.1:25)"
        issues.append(_issue(pos, f"{scope.label}: {why}"))
        return None
    return address, Service(label, preference, scope.pos)


def _command(config: ClusterConfig, issues: list[ConfigIssue]) -> tuple[str, ...] | None:
    option = config.tree.scope("cluster")
    found = option.get("duravip_command") if option is not None else None
    text = _text(found, issues, "a command line")
    if found is None or text is None:
        return None
    try:
        words = tuple(shlex.split(text))
    except ValueError as exc:
        issues.append(_issue(found.pos, f"duravip_command: {exc}"))
        return None
    if not words:
        issues.append(_issue(found.pos, "duravip_command is empty"))
        return None
    for word in words:
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(word) if name is not None]
        except ValueError as exc:
            issues.append(_issue(found.pos, f"duravip_command: {exc} in {word!r}"))
            continue
        for name in names:
            if name not in PLACEHOLDERS:
                allowed = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
                message = f"duravip_command: unknown placeholder {{{name}}}; use {allowed}"
                issues.append(_issue(found.pos, message))
    return words


def duravip_config(config: ClusterConfig) -> DuraVipConfig:
    """The DuraVIPs of ``config``; ConfigError listing every problem with its place."""
    issues: list[ConfigIssue] = []
    services: dict[str, list[Service]] = {}
    names: dict[str, tuple[str, Pos]] = {}
    for _, scope in config.tree.walk():
        if not (scope.is_("Binding") or scope.is_("Listen")):
            continue
        found = _service(scope, issues)
        if found is None:
            continue
        address, service = found
        seen = names.get(service.name)
        if seen is not None and seen[0] != address:
            issues.append(_issue(service.pos, f"{scope.label} is a DuraVIP on {address}, but "
                                 f"also on {seen[0]} at {seen[1].short}"))  # fmt: skip
            continue
        names[service.name] = (address, service.pos)
        services.setdefault(address, []).append(service)
    command = _command(config, issues)
    interface = DEFAULT_INTERFACE
    timeout = DEFAULT_TIMEOUT
    try:
        interface = config.get_str("duravip_interface", DEFAULT_INTERFACE)
        timeout = config.get_float("duravip_command_timeout", DEFAULT_TIMEOUT, above=0)
    except ConfigError as exc:
        issues += exc.issues
    if issues:
        raise ConfigError(issues)
    addresses = {a: VipConfig(a, tuple(s)) for a, s in sorted(services.items())}
    return DuraVipConfig(addresses, command, interface, timeout)


def command_line(cfg: DuraVipConfig, action: str, address: str) -> list[list[str]]:
    """The command lines that take (``up``) or give up (``down``) ``address``."""
    if cfg.command is not None:
        values = {"action": action, "address": address, "interface": cfg.interface}
        return [[word.format(**values) for word in cfg.command]]
    plen = 32 if ipaddress.ip_address(address).version == 4 else 128
    verb = "add" if action == "up" else "del"
    lines = [["ip", "addr", verb, f"{address}/{plen}", "dev", cfg.interface]]
    if action == "up" and plen == 32:
        # A gratuitous ARP so switches and neighbours learn the new owner at once.
        lines.append(["arping", "-U", "-c", "1", "-I", cfg.interface, address])
    return lines
