"""Renderables of the manager's commands: ``broadcast``/``unicast`` answers per node, and
the plain text a node sends back as its answer."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult

from mcluster.console.render import FOOTER_STYLE, HEADER_STYLE, WARNING_STYLE, line

__all__ = ["AnswersView", "JobsView", "job_line", "plain_text"]


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
            elif answer["error"] in ("timeout", "aborted"):
                why = f"no answer within {self.timeout:g} s (timeout)"
                if answer["error"] == "aborted":
                    why = "no answer before the broadcast was aborted"
                out.append((f"{node}: {why}", WARNING_STYLE))
            else:
                out.append((f"{node}: error: {answer['error']}", WARNING_STYLE))
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not self.answers:
            yield line("no nodes to ask", WARNING_STYLE)
        for text, style in self.lines():
            yield line(text, style)


HEADER = f"{'ID':>5}  {'STATE':<8} {'KIND':<10} {'RUNNER':<16} {'PROGRESS':>15} {'TIME':>9}  WHAT"


def job_line(job: Mapping[str, Any], now_ms: int) -> str:
    """``12  running  resync  relay-0-1  1,024/20,000  3.2 s  this node's lease was lost``."""
    progress = f"{job['done']:,}/{job['total']:,}" if job["total"] else f"{job['done']:,}"
    end = job["ended_ms"] if job["ended_ms"] is not None else now_ms
    took = f"{max(0, end - job['started_ms']) / 1000:.1f} s"
    detail = f" ({job['detail']})" if job["detail"] else ""
    return (
        f"{job['id']:>5}  {job['state']:<8} {job['kind']:<10} {job['runner']:<16} "
        f"{progress:>15} {took:>9}  {job['what']}{detail}"
    )


class JobsView:
    """``cluster jobs``: newest first, one line each."""

    def __init__(self, jobs: Sequence[Mapping[str, Any]], now_ms: int) -> None:
        self.jobs = jobs
        self.now_ms = now_ms

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not self.jobs:
            yield line("no jobs", FOOTER_STYLE)
            return
        yield line(HEADER, HEADER_STYLE)
        for job in self.jobs:
            style = WARNING_STYLE if job["state"] in ("failed", "lost") else ""
            yield line(job_line(job, self.now_ms), style)
