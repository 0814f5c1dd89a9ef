"""``Provider`` scopes: one name for every MX host a mailbox provider runs, as KumoMTA
matches providers, so every domain whose MX matches shares one bucket and one cap.

    Provider "google" {
      mx_suffix = (".google.com" ".googlemail.com")
      cluster_max_outbound_connections = 40
      cluster_outbound_throttle_messages = "600/60"
    }
    Binding "b1" { Provider "google" { cluster_max_outbound_connections = 5 } }

A connection's provider is the first top-level Provider (in config order) one of whose
``mx_suffix`` entries matches its MX ``host`` (or, when the report names no host, one of
its ``mx_hosts``): a suffix with a leading dot matches any name ending with it, one
without matches that name and the names below it. Names compare case-insensitively,
without a trailing dot. A Provider inside a Binding scope sets that binding's own limits
toward the top-level provider of the same name (whose mx_suffix it uses).
"""

from __future__ import annotations

from dataclasses import dataclass

from mcluster.config import ConfigIssue, Option, Scope, to_python
from mcluster.config.tree import Pos

PROVIDER = "Provider"
MX_SUFFIX = "mx_suffix"


@dataclass(frozen=True)
class Provider:
    """A top-level Provider scope: its name, its suffixes and the scope itself."""

    name: str
    suffixes: tuple[str, ...]
    scope: Scope

    def matches(self, host: str) -> bool:
        name = normal_host(host)
        for suffix in self.suffixes:
            if suffix.startswith("."):
                if name.endswith(suffix):
                    return True
            elif name == suffix or name.endswith("." + suffix):
                return True
        return False


def _issue(issues: list[ConfigIssue], pos: Pos, message: str) -> None:
    issues.append(ConfigIssue(pos.file, pos.line, pos.col, message))


def normal_host(host: str) -> str:
    """A DNS name as compared here: lower case, no trailing dot."""
    return host.strip().rstrip(".").lower()


def _suffixes(option: Option, issues: list[ConfigIssue], label: str) -> tuple[str, ...]:
    value = to_python(option.value)
    items = value if isinstance(value, tuple | list) else (value,)
    found = []
    for item in items:
        text = normal_host(item) if isinstance(item, str) else ""
        if not text or text == ".":
            _issue(
                issues,
                option.pos,
                f"{label}: {MX_SUFFIX} entries must be non-empty DNS "
                f'names like ".google.com", got {item!r}',
            )
            continue
        found.append(text)
    return tuple(found)


def read_providers(
    root: Scope, allowed: frozenset[str], issues: list[ConfigIssue]
) -> tuple[list[Provider], dict[str, Provider]]:
    """The top-level Providers (config order) and every Binding's own Provider scopes by
    ``binding\\0provider`` (casefolded); problems go to ``issues`` as FILE:LINE:COL."""
    top: list[Provider] = []
    by_name: dict[str, Provider] = {}
    for scope in root.scopes(PROVIDER):
        provider = _provider(scope, allowed, issues, None)
        if provider is None:
            continue
        if provider.name.casefold() in by_name:
            first = by_name[provider.name.casefold()].scope.pos
            pos = scope.pos
            _issue(issues, pos, f"Provider {provider.name!r} is defined twice (first at {first})")
            continue
        by_name[provider.name.casefold()] = provider
        top.append(provider)
    nested: dict[str, Provider] = {}
    for parent, scope in root.walk():
        if not scope.is_(PROVIDER) or parent is root:
            continue
        pos = scope.pos
        if not parent.is_("Binding"):
            _issue(
                issues,
                pos,
                f"Provider {scope.name!r} inside {parent.kind} "
                f"{parent.name!r}: a Provider scope goes at the top "
                "level or inside a Binding",
            )
            continue
        outer = by_name.get((scope.name or "").casefold())
        provider = _provider(scope, allowed, issues, outer, nested=True)
        if provider is not None:
            nested[f"{parent.name}\0{provider.name}".casefold()] = provider
    return top, nested


def _provider(
    scope: Scope,
    allowed: frozenset[str],
    issues: list[ConfigIssue],
    outer: Provider | None,
    nested: bool = False,
) -> Provider | None:
    """A Provider scope checked; ``nested`` inside a Binding, ``outer`` the top-level
    Provider of the same name."""
    label = f"Provider {scope.name!r}"
    pos = scope.pos
    if not scope.name:
        _issue(
            issues, pos, 'Provider needs a name: Provider "google" { mx_suffix = (".google.com") }'
        )
        return None
    bad = len(issues)
    for child in scope.scopes():
        _issue(issues, child.pos, f"{label}: unexpected scope {child.kind} inside a Provider")
    for opt in scope.options():
        if opt.key.casefold() not in allowed:
            _issue(
                issues,
                opt.pos,
                f"{label}: unknown option {opt.key!r} (expected one "
                f"of {', '.join(sorted(allowed))})",
            )
    option = scope.get(MX_SUFFIX)
    if outer is None and option is None and not nested:
        _issue(issues, pos, f'{label} has no {MX_SUFFIX}, e.g. mx_suffix = (".google.com")')
    elif nested and option is not None:
        _issue(issues, option.pos, f"{label} inside a Binding takes its {MX_SUFFIX} from the "
               "top-level Provider of that name; set it there")  # fmt: skip
    elif nested and outer is None:
        _issue(issues, pos, f"{label} inside a Binding names no top-level Provider: define "
               f'Provider "{scope.name}" {{ {MX_SUFFIX} = (...) }} at the top level')  # fmt: skip
    suffixes = _suffixes(option, issues, label) if option is not None and not nested else ()
    if len(issues) > bad:
        return None
    return Provider(scope.name, outer.suffixes if outer is not None else suffixes, scope)


def provider_of(
    providers: list[Provider], host: str | None, mx_hosts: tuple[str, ...]
) -> str | None:
    """The name of the first Provider matching ``host`` (else any of ``mx_hosts``)."""
    candidates = (host,) if host else mx_hosts
    for provider in providers:
        if any(provider.matches(h) for h in candidates):
            return provider.name
    return None
