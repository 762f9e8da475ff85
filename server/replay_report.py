"""``vsl migrate verify``'s comparison: the same scenarios replayed against two servers,
reply by reply, and the report of what differs (side by side, or as JSON)."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .replay import Reply, Scenario, Turn, replay

WIDTHS = (34, 38, 38, 24)  # the columns: command, A's reply, B's reply, expected


@dataclass(frozen=True)
class Difference:
    """One turn that the two servers answered differently."""

    scenario: Scenario
    turn: Turn
    a: Reply
    b: Reply


@dataclass
class Report:
    a: str  # the servers' HOST:PORT, as given
    b: str
    conversations: int = 0
    commands: int = 0
    differences: list[Difference] = field(default_factory=list)


def compare(scenarios: list[Scenario], a: tuple[str, int], b: tuple[str, int], *,
            names: tuple[str, str], text: bool = False, timeout: float = 10.0,
            send_messages: bool = False) -> Report:
    """Replay every scenario against ``a`` and ``b`` (messages withheld unless
    ``send_messages``); a turn differs when its replies' codes or enhanced codes differ
    (or their text, with ``text``)."""
    report = Report(*names)
    for scenario in scenarios:
        replies_a, replies_b = (replay(scenario, server, timeout, send_messages)
                                for server in (a, b))
        report.conversations += 1
        report.commands += len(scenario.turns)
        report.differences += [
            Difference(scenario, turn, reply_a, reply_b)
            for turn, reply_a, reply_b in zip(scenario.turns, replies_a, replies_b)
            if reply_a.key(text) != reply_b.key(text)]
    return report


def summary(report: Report) -> str:
    return (f"{report.conversations} conversations, {report.commands} commands, "
            f"{len(report.differences)} differ")


def render(report: Report) -> str:
    """The side-by-side diff, one block per conversation that differs, and the summary."""
    out: list[str] = []
    shown = None
    expected = any(difference.turn.expected for difference in report.differences)
    header = ("command", f"A {report.a}", f"B {report.b}") + (("expected",) if expected else ())
    for difference in report.differences:
        if difference.scenario is not shown:
            shown = difference.scenario
            out += ["", f"{shown.name}{_client(shown)}", _row(header)]
        row = (difference.turn.label(), str(difference.a), str(difference.b))
        out.append(_row(row + ((" | ".join(difference.turn.expected),) if expected else ())))
    return "\n".join(out + ["", summary(report)]).lstrip("\n")


def as_json(report: Report) -> dict:
    """The report as plain data (``--json``)."""
    return {
        "a": report.a, "b": report.b, "conversations": report.conversations,
        "commands": report.commands, "differ": len(report.differences),
        "differences": [
            {"scenario": difference.scenario.name, "client_ip": difference.scenario.client_ip,
             "command": difference.turn.label(), "expected": list(difference.turn.expected),
             "a": _reply_data(difference.a), "b": _reply_data(difference.b)}
            for difference in report.differences],
    }


def _reply_data(reply: Reply) -> dict:
    return {"code": reply.code, "enhanced": reply.enhanced, "lines": list(reply.lines),
            "event": reply.event or None}


def _client(scenario: Scenario) -> str:
    if not scenario.client_ip:
        return ""
    if ipaddress.ip_address(scenario.client_ip).is_loopback:
        return f"  (client {scenario.client_ip})"
    return f"  (client {scenario.client_ip}, sent from this machine's own address)"


def _row(cells: tuple[str, ...]) -> str:
    """Cells cut to their column's width (with '…') and padded."""
    return "  " + "  ".join(
        (cell if len(cell) <= width else cell[:width - 1] + "…").ljust(width)
        for cell, width in zip(cells, WIDTHS)).rstrip()
