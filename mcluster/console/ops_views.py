"""Renderables of the manager's commands: ``broadcast``/``unicast`` answers per node, and
the plain text a node sends back as its answer."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult

from mcluster.console.render import WARNING_STYLE, line

__all__ = ["AnswersView", "plain_text"]


def plain_text(renderable: RenderableType) -> str:
    """What the console would print, as plain text without colour or trailing newline."""
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None, highlight=False, soft_wrap=True)
    console.print(renderable)
    return out.getvalue().rstrip("\n")


class AnswersView:
    """One block per node: ``NODE:`` then its output indented, or why it has none."""

    def __init__(self, answers: Mapping[str, Mapping[str, Any]], timeout: float) -> None:
        self.answers = answers
        self.timeout = timeout

    def lines(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for node, answer in self.answers.items():
            if answer["ok"]:
                out.append((f"{node}:", ""))
                out += [(f"    {text}", "") for text in str(answer["output"]).splitlines()]
            elif answer["error"] == "timeout":
                why = f"no answer within {self.timeout:g} s (timeout)"
                out.append((f"{node}: {why}", WARNING_STYLE))
            else:
                out.append((f"{node}: error: {answer['error']}", WARNING_STYLE))
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not self.answers:
            yield line("no nodes to ask", WARNING_STYLE)
        for text, style in self.lines():
            yield line(text, style)
