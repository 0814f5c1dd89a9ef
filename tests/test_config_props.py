"""Property tests of the ecelerity.conf grammar."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mcluster.config import (
    ConfigError,
    DictValue,
    ListValue,
    Option,
    Pos,
    Scope,
    String,
    Value,
    Word,
    format_tree,
    parse,
    parse_config,
)

_P = Pos("gen", 1, 1)
_WORD_CHARS = st.characters(
    min_codepoint=33, max_codepoint=0x2FF, exclude_characters='{}()[]=,"#\x7f'
)
words = st.text(_WORD_CHARS, min_size=1, max_size=8).filter(
    lambda t: not any(c.isspace() for c in t)
)
strings = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)

scalars: st.SearchStrategy[Value] = st.one_of(
    words.map(lambda t: Word(t, _P)), strings.map(lambda t: String(t, _P))
)
values: st.SearchStrategy[Value] = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: ListValue(tuple(items), _P)),
        st.lists(
            st.builds(lambda k, v: Option(k, v, _P), st.one_of(words, strings), inner), max_size=4
        ).map(lambda entries: DictValue(tuple(entries), _P)),
    ),
    max_leaves=8,
)
options = st.builds(lambda k, v: Option(k, v, _P), words, values)


def _scopes(depth: int) -> st.SearchStrategy[Scope]:
    child: st.SearchStrategy[Scope | Option] = (
        options if depth == 0 else st.one_of(options, _scopes(depth - 1))
    )
    return st.builds(
        lambda kind, name, items: Scope(kind, name, tuple(items), _P),
        words,
        st.none() | strings,
        st.lists(child, max_size=4),
    )


roots = st.lists(st.one_of(options, _scopes(3)), max_size=5).map(
    lambda items: Scope("", None, tuple(items), _P)
)


@settings(max_examples=300)
@given(roots)
def test_pretty_printed_tree_parses_back_equal(tree: Scope) -> None:
    assert parse(format_tree(tree), "gen") == tree


@settings(max_examples=300)
@given(
    st.text(alphabet=st.sampled_from(list('ab =#{}()[],"\\\n 1;')) | st.characters(), max_size=60)
)
def test_any_text_parses_or_raises_config_error(text: str) -> None:
    try:
        parse_config(text, "fuzz.conf")
    except ConfigError as exc:
        assert exc.issues
        assert all(str(i).startswith("fuzz.conf:") for i in exc.issues)
