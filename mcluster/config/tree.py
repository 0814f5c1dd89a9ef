"""The syntax tree of an ecelerity.conf file, and a printer for it.

Nodes are frozen dataclasses. Positions are kept on every node but are not
part of equality, so two trees with the same content compare equal.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

# Characters that end a bare word (besides whitespace).
SPECIAL_CHARS = frozenset('{}()[]=,"#')

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


@dataclass(frozen=True, order=True)
class Pos:
    """A place in a source file; line and col are 1-based."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    @property
    def short(self) -> str:
        """``LINE:COL`` without the file name."""
        return f"{self.line}:{self.col}"


@dataclass(frozen=True)
class Word:
    """A bare (unquoted) value such as ``true``, ``30``, ``1.5`` or ``/var/log/x``."""

    text: str
    pos: Pos = field(compare=False, repr=False)


@dataclass(frozen=True)
class String:
    """A double-quoted value; ``text`` holds the decoded characters."""

    text: str
    pos: Pos = field(compare=False, repr=False)


@dataclass(frozen=True)
class ListValue:
    """A list ``("a" "b", c)``."""

    items: tuple[Value, ...]
    pos: Pos = field(compare=False, repr=False)


@dataclass(frozen=True)
class DictValue:
    """A dictionary ``[ k = v, ... ]``; entries keep their order."""

    entries: tuple[Option, ...]
    pos: Pos = field(compare=False, repr=False)

    def get(self, key: str) -> Option | None:
        """The last entry named ``key`` (case-insensitive), if any."""
        folded = key.casefold()
        for entry in reversed(self.entries):
            if entry.key.casefold() == folded:
                return entry
        return None


Value = Word | String | ListValue | DictValue


@dataclass(frozen=True)
class Option:
    """``key = value``; ``pos`` is where the key starts."""

    key: str
    value: Value
    pos: Pos = field(compare=False, repr=False)

    @property
    def value_pos(self) -> Pos:
        """Where the value starts."""
        return self.value.pos

    def is_(self, key: str) -> bool:
        """Whether this option is named ``key`` (case-insensitive)."""
        return self.key.casefold() == key.casefold()


@dataclass(frozen=True)
class Scope:
    """``Kind { ... }`` or ``Kind "name" { ... }``; the file itself is a scope of kind ``""``."""

    kind: str
    name: str | None
    items: tuple[Scope | Option, ...]
    pos: Pos = field(compare=False, repr=False)

    def is_(self, kind: str) -> bool:
        """Whether this scope is of ``kind`` (case-insensitive)."""
        return self.kind.casefold() == kind.casefold()

    @property
    def label(self) -> str:
        """How messages name this scope: ``"cluster"`` or ``Replicate "x"``."""
        if self.name is None:
            return quote(self.kind)
        return f"{self.kind} {quote(self.name)}"

    def scopes(self, kind: str | None = None) -> tuple[Scope, ...]:
        """Child scopes, optionally only those of ``kind`` (case-insensitive)."""
        return tuple(
            i for i in self.items if isinstance(i, Scope) and (kind is None or i.is_(kind))
        )

    def scope(self, kind: str, name: str | None = None) -> Scope | None:
        """The first child scope of ``kind`` (and ``name``, case-insensitive), if any."""
        for child in self.scopes(kind):
            if name is None or (child.name or "").casefold() == name.casefold():
                return child
        return None

    def options(self, key: str | None = None) -> tuple[Option, ...]:
        """Options of this scope, optionally only those named ``key`` (case-insensitive)."""
        return tuple(i for i in self.items if isinstance(i, Option) and (key is None or i.is_(key)))

    def get(self, key: str) -> Option | None:
        """The last option named ``key`` (case-insensitive), if any."""
        found = self.options(key)
        return found[-1] if found else None

    def walk(self) -> Iterator[tuple[Scope, Scope]]:
        """Every scope below this one as ``(parent, scope)``, depth first, in file order."""
        stack: list[tuple[Scope, Scope]] = [(self, c) for c in reversed(self.scopes())]
        while stack:
            parent, scope = stack.pop()
            yield parent, scope
            stack.extend((scope, c) for c in reversed(scope.scopes()))


def quote(text: str) -> str:
    """``text`` as a double-quoted string, escaped so the lexer reads it back."""
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in text) + '"'


def is_bare_word(text: str) -> bool:
    """Whether ``text`` can be written without quotes."""
    return bool(text) and not any(ch.isspace() or ch in SPECIAL_CHARS for ch in text)


def format_value(value: Value) -> str:
    """A value in ecelerity.conf syntax, on one line."""
    if isinstance(value, Word):
        return value.text
    if isinstance(value, String):
        return quote(value.text)
    if isinstance(value, ListValue):
        return "(" + " ".join(format_value(v) for v in value.items) + ")"
    body = ", ".join(_format_option(e) for e in value.entries)
    return "[ " + body + " ]" if body else "[]"


def _format_option(option: Option) -> str:
    key = option.key if is_bare_word(option.key) else quote(option.key)
    return f"{key} = {format_value(option.value)}"


def format_tree(scope: Scope, indent: str = "  ") -> str:
    """The text of a tree; a root scope (kind ``""``) prints its items only."""
    lines: list[str] = []

    def emit(item: Scope | Option, depth: int) -> None:
        pad = indent * depth
        if isinstance(item, Option):
            lines.append(pad + _format_option(item))
            return
        head = item.kind if item.name is None else f"{item.kind} {quote(item.name)}"
        if not item.items:
            lines.append(f"{pad}{head} {{}}")
            return
        lines.append(f"{pad}{head} {{")
        for child in item.items:
            emit(child, depth + 1)
        lines.append(pad + "}")

    if scope.kind:
        emit(scope, 0)
    else:
        for item in scope.items:
            emit(item, 0)
    return "\n".join(lines) + "\n" if lines else ""
