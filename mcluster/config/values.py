"""Turning tree values into plain Python values, and describing them in messages."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

from mcluster.config.tree import ListValue, String, Value, Word, format_value, quote

_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class OptionMap(Mapping[str, Any]):
    """A read-only mapping with case-insensitive keys that keeps the keys' spelling."""

    __slots__ = ("_data", "_folded")

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = dict(items or {})
        self._folded: dict[str, str] = {k.casefold(): k for k in self._data}

    def __getitem__(self, key: str) -> Any:
        return self._data[self._folded.get(key.casefold(), key)]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.casefold() in self._folded

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"OptionMap({self._data!r})"

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._folded)))

    def to_dict(self) -> dict[str, Any]:
        """A plain ``dict`` copy, nested maps included."""
        return {k: to_builtin(v) for k, v in self._data.items()}


def to_builtin(value: Any) -> Any:
    """``value`` with every OptionMap turned into a dict and tuples into lists (for JSON)."""
    if isinstance(value, OptionMap):
        return value.to_dict()
    if isinstance(value, tuple):
        return [to_builtin(v) for v in value]
    return value


def to_python(value: Value) -> Any:
    """A plain value: quoted text stays ``str``; bare ``true``/``false``, ints and floats convert.

    Lists become tuples and dictionaries become OptionMaps (last duplicate key wins).
    """
    if isinstance(value, String):
        return value.text
    if isinstance(value, Word):
        text = value.text
        if text.casefold() in ("true", "false"):
            return text.casefold() == "true"
        if _INT_RE.fullmatch(text):
            return int(text)
        if _FLOAT_RE.fullmatch(text):
            return float(text)
        return text
    if isinstance(value, ListValue):
        return tuple(to_python(v) for v in value.items)
    return OptionMap({e.key: to_python(e.value) for e in value.entries})


def scalar_text(value: Value) -> str | None:
    """The text of a word or quoted string, or None for a list or dictionary."""
    return value.text if isinstance(value, Word | String) else None


def describe(value: Value) -> str:
    """How messages echo a value: ``"ten"`` for a word or string, else the kind and its text."""
    if isinstance(value, Word | String):
        return quote(value.text)
    kind = "a list" if isinstance(value, ListValue) else "a dictionary"
    return f"{kind} {format_value(value)}"


def parse_int(text: str) -> int | None:
    """``text`` as an integer, or None."""
    stripped = text.strip()
    return int(stripped) if _INT_RE.fullmatch(stripped) else None


def parse_float(text: str) -> float | None:
    """``text`` as a finite number, or None."""
    stripped = text.strip()
    if not _FLOAT_RE.fullmatch(stripped):
        return None
    number = float(stripped)
    return number if math.isfinite(number) else None


def parse_bool(text: str) -> bool | None:
    """``text`` as a boolean (true/false, yes/no, on/off, 1/0), or None."""
    folded = text.strip().casefold()
    if folded in ("true", "yes", "on", "1"):
        return True
    if folded in ("false", "no", "off", "0"):
        return False
    return None
