"""``vsl migrate verify``: replay SMTP conversations against a server, the way a client would.

A :class:`Scenario` is one conversation: the client's address and its turns, each a
command line (or a message's lines after DATA) with the reply the scenario expects, if it
says. Scenarios come from ``vsl test`` transcripts (:func:`from_transcript`, through the
transcript parser: the ``C:`` lines are the conversation, the ``S:`` lines the expected
replies) or from Postfix's mail log (``server/maillog.py``).

:func:`replay` plays one scenario against one server over a plain TCP connection, bound
to the scenario's client address when it names one (any 127.0.0.x works on Linux's
loopback). It gives one :class:`Reply` per turn, so that two servers' runs line up turn
by turn. No reply is an event of its own, never an exception: "(closed)" once the server
has closed the connection, "(timeout)" for a reply that did not come in time (the
connection is then given up), "(not sent)" for what a real client would not send after a
refusal: no RCPT or DATA after a refused MAIL, no DATA once every RCPT was refused, no
message unless DATA got 354, nothing but QUIT after a refused greeting.

Replaying must not deliver mail: scenarios from a mail log name real recipients, and a
server that relays for the replaying address would send them the stand-in message. So by
default no message is completed: on 354 the client closes the connection without the
final dot (a server discards a message whose connection is lost in DATA), the message's
turn is "(message withheld)" for both servers, and the conversation goes on over a new
connection, greeted again with the last HELO or EHLO, so that every later command is
still compared. ``send_messages`` sends whole messages, for test instances only.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from .transcript import CLOSED, Transcript, TranscriptError, parse

GREETING = "(connect)"  # the turn that reads the greeting: no line is sent
_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_REPLY_LINE = re.compile(r"(\d{3})([ -]|$)(.*)")


@dataclass(frozen=True)
class Turn:
    """What the client sends at one step (no line for the greeting; a message's lines,
    "." included, after DATA) and the reply lines the scenario expects (maybe none)."""

    lines: tuple[str, ...]
    expected: tuple[str, ...] = ()
    message: bool = False

    @property
    def verb(self) -> str:
        if self.message:
            return "."
        return self.lines[0].split(" ", 1)[0].split(":", 1)[0].upper() if self.lines else ""

    def label(self) -> str:
        """How the turn is named in a diff: the command line, or the message's size."""
        if not self.lines:
            return GREETING
        if self.message:
            return f"(message, {len(self.lines) - 1} lines)"
        return self.lines[0]


@dataclass
class Scenario:
    """One conversation to replay; ``name`` says where it comes from (file, log line)."""

    name: str
    turns: list[Turn] = field(default_factory=list)
    client_ip: str | None = None


@dataclass(frozen=True)
class Reply:
    """A server's reply to one turn (its lines as received), or the event that took its
    place ("(closed)", "(timeout)", "(not sent)", "(cannot connect: ...)")."""

    lines: tuple[str, ...] = ()
    event: str = ""

    @property
    def code(self) -> int | None:
        found = self._last_line()
        return int(found[1]) if found else None

    @property
    def enhanced(self) -> str | None:
        found = self._last_line()
        enhanced = _ENHANCED.match(found[3]) if found else None
        return enhanced[0] if enhanced else None

    def _last_line(self) -> re.Match | None:
        """The last line (the one a reply's code is read from) as code, mark, text."""
        return _REPLY_LINE.match(self.lines[-1]) if self.lines else None

    def key(self, text: bool = False) -> tuple:
        """What two replies are compared on: code and enhanced code (and the text)."""
        if self.event or self.code is None:
            return (self.event, self.lines)
        return (self.code, self.enhanced, self.lines if text else ())

    def __str__(self) -> str:
        if self.event:
            return self.event
        more = f" (+{len(self.lines) - 1} lines)" if len(self.lines) > 1 else ""
        return self.lines[0] + more


TIMEOUT = Reply(event="(timeout)")
CLOSED_REPLY = Reply(event="(closed)")
NOT_SENT = Reply(event="(not sent)")
WITHHELD = Reply(event="(message withheld)")


class ScenarioError(ValueError):
    """A scenario that cannot be read (the message names the file)."""


# ---- scenarios from transcripts -------------------------------------------------------

def from_transcript(transcript: Transcript) -> Scenario:
    """The conversation of a ``vsl test`` transcript: consecutive ``C:`` lines followed by
    ``S:`` lines form turns (several commands sent at once are split, and each takes its
    reply in order); the lines after a DATA are the message."""
    scenario = Scenario(str(transcript.path), client_ip=transcript.client_ip)
    sent: list[str] = []
    replies: list[str] = []
    for _, kind, text in transcript.steps + [(0, "C", "")]:  # a last C: flushes the rest
        if kind == "S":
            replies.append(text)
            continue
        if replies:
            scenario.turns.extend(_turns(sent, replies, scenario.turns))
            sent, replies = [], []
        sent.append(text)
    return scenario


def _turns(sent: list[str], replies: list[str], before: list[Turn]) -> list[Turn]:
    """The turns of one group of client lines and the server lines that follow them."""
    answers = _split_replies(replies)
    if not sent:
        return [Turn((), answers[0] if answers else ())]
    if before and before[-1].verb == "DATA" and not before[-1].message:
        return [Turn(tuple(sent), answers[0] if answers else (), message=True)]
    answers += [()] * (len(sent) - len(answers))
    return [Turn((line,), answer) for line, answer in zip(sent, answers)]


def _split_replies(lines: list[str]) -> list[tuple[str, ...]]:
    """``S:`` lines as replies: a reply ends with a line that is not ``ddd-...``."""
    replies, current = [], []
    for line in lines:
        current.append(line)
        if line == CLOSED or not re.match(r"\d{3}-", line):
            replies.append(tuple(current))
            current = []
    return replies + ([tuple(current)] if current else [])


def load(paths: list[Path]) -> list[Scenario]:
    """The scenarios of transcript files, or of every ``*.transcript`` in a directory."""
    scenarios = []
    for path in paths:
        files = sorted(path.glob("*.transcript")) if path.is_dir() else [path]
        for file in files:
            try:
                scenarios.append(from_transcript(parse(file)))
            except TranscriptError as err:
                raise ScenarioError(str(err)) from None
    return scenarios


def to_transcript(scenario: Scenario) -> str:
    """The scenario in the transcript format (read back by :func:`load`); a turn that
    expects no particular reply gets ``S: *``, any reply."""
    out = [f"# Replay scenario {scenario.name}"]
    if scenario.client_ip:
        out.append(f"# client-ip: {scenario.client_ip}")
    for turn in scenario.turns:
        out += [f"C: {line}".rstrip() for line in turn.lines]
        out += [f"S: {line}" for line in turn.expected or ("*",)]
    return "\n".join(out) + "\n"


# ---- one scenario against one server --------------------------------------------------

def replay(scenario: Scenario, target: tuple[str, int], timeout: float = 10.0,
           send_messages: bool = False) -> list[Reply]:
    """Play ``scenario`` against the server at ``target``: one reply per turn. Messages
    are withheld unless ``send_messages`` (see the module's docstring)."""
    connect = partial(_Connection, target, scenario.client_ip, timeout)
    try:
        connection = connect()
    except OSError as err:
        failed = Reply(event=f"(cannot connect: {err.strerror or err})")
        return [failed] + [NOT_SENT] * (len(scenario.turns) - 1)
    client = _Client(connection, connect, send_messages)
    try:
        return [client.play(turn) for turn in scenario.turns]
    finally:
        client.connection.close()


class _Client:
    """A client's judgement along one conversation: what it would not send after a
    refusal, what it cannot send once the connection is gone, and the messages it
    withholds."""

    def __init__(self, connection: "_Connection", connect: Callable[[], "_Connection"],
                 send_messages: bool):
        self.connection, self.connect = connection, connect
        self.send_messages = send_messages
        self.gone: Reply | None = None  # CLOSED_REPLY or NOT_SENT once the link is lost
        self.greeted = True
        self.hello: tuple[str, ...] = ()  # the last HELO or EHLO, to greet a new connection
        self.mail_refused = False
        self.rcpts = self.accepted = 0
        self.data_accepted = False

    def play(self, turn: Turn) -> Reply:
        if self.gone:
            return self.gone
        if not self._would_send(turn):
            return NOT_SENT
        if turn.message and not self.send_messages:
            return self._withhold()
        reply = self.connection.exchange(turn.lines)
        if reply in (CLOSED_REPLY, TIMEOUT):
            self.gone = CLOSED_REPLY if reply == CLOSED_REPLY else NOT_SENT
            return reply
        self._note(turn, reply.code or 0)
        return reply

    def _withhold(self) -> Reply:
        """Leave the message out: drop the connection in the middle of DATA (the server
        discards the message) and go on over a new one."""
        self.connection.close()
        self.data_accepted = False
        self.rcpts = self.accepted = 0
        if not self._greet_again():
            self.gone = NOT_SENT
        return WITHHELD

    def _greet_again(self) -> bool:
        """Open a new connection, read its greeting and send the last HELO or EHLO again:
        whether both got a 2xx reply."""
        try:
            self.connection = self.connect()
        except OSError:
            return False
        exchanges = [()] + ([self.hello] if self.hello else [])
        return all(200 <= (self.connection.exchange(lines).code or 0) < 300
                   for lines in exchanges)

    def _would_send(self, turn: Turn) -> bool:
        verb = turn.verb
        if not self.greeted:
            return verb == "QUIT"
        if turn.message:
            return self.data_accepted
        if verb in ("RCPT", "DATA") and self.mail_refused:
            return False
        return not (verb == "DATA" and self.rcpts and not self.accepted)

    def _note(self, turn: Turn, code: int) -> None:
        """What the reply to ``turn`` changes in the client's view of the session."""
        verb, ok = turn.verb, 200 <= code < 400
        self.data_accepted = verb == "DATA" and code == 354
        if not turn.lines:
            self.greeted = ok
        elif verb in ("MAIL", "RSET", "HELO", "EHLO", "."):
            if verb in ("HELO", "EHLO") and ok:
                self.hello = turn.lines
            self.mail_refused = verb == "MAIL" and not ok
            self.rcpts = self.accepted = 0
        elif verb == "RCPT":
            self.rcpts += 1
            self.accepted += ok


class _Connection:
    """A plain TCP connection to the server, from the client's address when it can be
    bound here (otherwise from the default one), reading whole replies."""

    def __init__(self, target: tuple[str, int], client_ip: str | None, timeout: float):
        family, kind, proto, _, address = socket.getaddrinfo(
            *target, type=socket.SOCK_STREAM)[0]
        self.sock = socket.socket(family, kind, proto)
        self.sock.settimeout(timeout)
        try:
            if client_ip and bindable(client_ip, address[0]):
                self.sock.bind((client_ip, 0))
            self.sock.connect(address)
        except OSError:
            self.sock.close()
            raise
        self.file = self.sock.makefile("rb")

    def exchange(self, lines: tuple[str, ...]) -> Reply:
        """Send ``lines`` (none for the greeting) and read the reply."""
        try:
            if lines:
                self.sock.sendall(b"".join(line.encode("utf-8", "surrogateescape") + b"\r\n"
                                           for line in lines))
            return self._reply()
        except TimeoutError:
            return TIMEOUT
        except OSError:
            return CLOSED_REPLY

    def _reply(self) -> Reply:
        lines = []
        while True:
            raw = self.file.readline()
            if not raw:
                return Reply(tuple(lines)) if lines else CLOSED_REPLY
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(line)
            if line[3:4] != "-":
                return Reply(tuple(lines))

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def bindable(client_ip: str, server_ip: str) -> bool:
    """Whether the connection can come from the client's address: a loopback address
    towards a loopback server of the same family (other addresses are not this
    machine's to send from)."""
    client, server = ipaddress.ip_address(client_ip), ipaddress.ip_address(server_ip)
    return client.is_loopback and server.is_loopback and client.version == server.version

