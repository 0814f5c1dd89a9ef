"""Tokenizer and recursive-descent parser for Momentum's ecelerity.conf syntax.

Grammar::

    file   := item* EOF
    item   := WORD "=" value | WORD STRING? "{" item* "}"
    value  := STRING | WORD | "(" (value ","?)* ")" | "[" (key "=" value ","?)* "]"
    key    := WORD | STRING

``#`` starts a comment that runs to the end of the line. Scopes nest up to
``MAX_SCOPE_DEPTH`` (the parser keeps its own stack); values up to ``MAX_VALUE_DEPTH``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mcluster.config.errors import ConfigError
from mcluster.config.tree import (
    SPECIAL_CHARS,
    DictValue,
    ListValue,
    Option,
    Pos,
    Scope,
    String,
    Value,
    Word,
    quote,
)
from mcluster.security.config_limits import MAX_SCOPE_DEPTH, too_deep

MAX_VALUE_DEPTH = 100

_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


class Tok(enum.Enum):
    """Token kinds."""

    WORD = "word"
    STRING = "string"
    LBRACE = "{"
    RBRACE = "}"
    LPAREN = "("
    RPAREN = ")"
    LBRACKET = "["
    RBRACKET = "]"
    EQUALS = "="
    COMMA = ","
    EOF = "end of file"


_PUNCT = {t.value: t for t in Tok if len(t.value) == 1}


@dataclass(frozen=True)
class Token:
    """One token; ``text`` is the decoded text of a word or string."""

    kind: Tok
    text: str
    pos: Pos

    def describe(self) -> str:
        """How error messages show this token."""
        if self.kind is Tok.EOF:
            return "end of file"
        if self.kind is Tok.STRING:
            return f"string {quote(self.text)}"
        return quote(self.text)


def _error(pos: Pos, message: str) -> ConfigError:
    return ConfigError.single(pos.file, pos.line, pos.col, message)


def tokenize(text: str, filename: str = "<string>") -> list[Token]:
    """Split ``text`` into tokens, ending with one EOF token."""
    tokens: list[Token] = []
    i, line, col, n = 0, 1, 1, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            i, line, col = i + 1, line + 1, 1
        elif ch.isspace():
            i, col = i + 1, col + 1
        elif ch == "#":
            while i < n and text[i] != "\n":
                i, col = i + 1, col + 1
        elif ch == '"':
            start = Pos(filename, line, col)
            chars: list[str] = []
            i, col = i + 1, col + 1
            while True:
                if i >= n or text[i] == "\n":
                    got = "end of file" if i >= n else "end of line"
                    raise _error(
                        Pos(filename, line, col),
                        f"expected '\"' to close the string opened at {start.short}, got {got}",
                    )
                ch = text[i]
                if ch == '"':
                    i, col = i + 1, col + 1
                    break
                if ch == "\\" and i + 1 < n and text[i + 1] != "\n":
                    nxt = text[i + 1]
                    chars.append(_SIMPLE_ESCAPES.get(nxt, "\\" + nxt))
                    i, col = i + 2, col + 2
                    continue
                chars.append(ch)
                i, col = i + 1, col + 1
            tokens.append(Token(Tok.STRING, "".join(chars), start))
        elif ch in _PUNCT:
            tokens.append(Token(_PUNCT[ch], ch, Pos(filename, line, col)))
            i, col = i + 1, col + 1
        else:
            start_i, start = i, Pos(filename, line, col)
            while i < n and not text[i].isspace() and text[i] not in SPECIAL_CHARS:
                i, col = i + 1, col + 1
            tokens.append(Token(Tok.WORD, text[start_i:i], start))
    tokens.append(Token(Tok.EOF, "", Pos(filename, line, col)))
    return tokens


@dataclass
class _Open:
    """A scope whose closing brace has not been seen yet."""

    kind: str
    name: str | None
    pos: Pos
    items: list[Scope | Option]

    def close(self) -> Scope:
        return Scope(self.kind, self.name, tuple(self.items), self.pos)


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        if tok.kind is not Tok.EOF:
            self.i += 1
        return tok

    def parse_file(self) -> Scope:
        root = _Open("", None, Pos(self.tokens[-1].pos.file, 1, 1), [])
        stack = [root]
        while True:
            tok = self.take()
            top = stack[-1]
            if tok.kind is Tok.EOF:
                if len(stack) > 1:
                    raise _error(
                        tok.pos,
                        f'expected "}}" to close scope {top.close().label} '
                        f"opened at {top.pos.short}, got end of file",
                    )
                return root.close()
            if tok.kind is Tok.RBRACE:
                if len(stack) == 1:
                    raise _error(
                        tok.pos, 'expected an option or a scope, got "}" (no scope is open)'
                    )
                stack.pop()
                stack[-1].items.append(top.close())
                continue
            if tok.kind is not Tok.WORD:
                closer = ' or "}"' if len(stack) > 1 else ""
                raise _error(
                    tok.pos, f"expected an option or a scope{closer}, got {tok.describe()}"
                )
            nxt = self.take()
            if nxt.kind is Tok.EQUALS:
                top.items.append(Option(tok.text, self.parse_value(tok, 0), tok.pos))
            elif nxt.kind is Tok.LBRACE:
                self.check_depth(stack, tok)
                stack.append(_Open(tok.text, None, tok.pos, []))
            elif nxt.kind is Tok.STRING:
                brace = self.take()
                if brace.kind is not Tok.LBRACE:
                    raise _error(
                        brace.pos,
                        f'expected "{{" to open scope {tok.text} {quote(nxt.text)}, '
                        f"got {brace.describe()}",
                    )
                self.check_depth(stack, tok)
                stack.append(_Open(tok.text, nxt.text, tok.pos, []))
            else:
                raise _error(
                    nxt.pos,
                    f'expected "=" or "{{" after {quote(tok.text)}, got {nxt.describe()}',
                )

    @staticmethod
    def check_depth(stack: list[_Open], opener: Token) -> None:
        """Refuse a scope nested deeper than ``MAX_SCOPE_DEPTH`` (the root is not one)."""
        if len(stack) > MAX_SCOPE_DEPTH:
            raise too_deep(opener.pos.file, opener.pos.line, opener.pos.col)

    def parse_value(self, owner: Token, depth: int) -> Value:
        tok = self.take()
        if tok.kind is Tok.WORD:
            return Word(tok.text, tok.pos)
        if tok.kind is Tok.STRING:
            return String(tok.text, tok.pos)
        if tok.kind in (Tok.LPAREN, Tok.LBRACKET):
            if depth >= MAX_VALUE_DEPTH:
                raise _error(
                    tok.pos, f"expected at most {MAX_VALUE_DEPTH} nested lists or dictionaries"
                )
            if tok.kind is Tok.LPAREN:
                return self.parse_list(tok, depth + 1)
            return self.parse_dict(tok, depth + 1)
        raise _error(tok.pos, f"expected a value for {quote(owner.text)}, got {tok.describe()}")

    def parse_list(self, opener: Token, depth: int) -> ListValue:
        items: list[Value] = []
        where = f"the list opened at {opener.pos.short}"
        while True:
            tok = self.peek()
            if tok.kind is Tok.RPAREN:
                self.take()
                return ListValue(tuple(items), opener.pos)
            if tok.kind is Tok.EOF:
                raise _error(tok.pos, f'expected ")" to close {where}, got end of file')
            if tok.kind not in (Tok.WORD, Tok.STRING, Tok.LPAREN, Tok.LBRACKET):
                raise _error(tok.pos, f'expected a value or ")" in {where}, got {tok.describe()}')
            items.append(self.parse_value(opener, depth))
            if self.peek().kind is Tok.COMMA:
                self.take()

    def parse_dict(self, opener: Token, depth: int) -> DictValue:
        entries: list[Option] = []
        where = f"the dictionary opened at {opener.pos.short}"
        while True:
            tok = self.take()
            if tok.kind is Tok.RBRACKET:
                return DictValue(tuple(entries), opener.pos)
            if tok.kind is Tok.EOF:
                raise _error(tok.pos, f'expected "]" to close {where}, got end of file')
            if tok.kind not in (Tok.WORD, Tok.STRING):
                raise _error(tok.pos, f'expected a key or "]" in {where}, got {tok.describe()}')
            eq = self.take()
            if eq.kind is not Tok.EQUALS:
                raise _error(
                    eq.pos,
                    f'expected "=" after dictionary key {quote(tok.text)}, got {eq.describe()}',
                )
            entries.append(Option(tok.text, self.parse_value(tok, depth), tok.pos))
            if self.peek().kind is Tok.COMMA:
                self.take()


def parse(text: str, filename: str = "<string>") -> Scope:
    """Parse ecelerity.conf text into a root scope (kind ``""``); ConfigError on bad syntax."""
    return _Parser(tokenize(text, filename)).parse_file()
