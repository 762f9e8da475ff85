"""``vsl test``: replay recorded SMTP sessions through the real server code, no network.

A transcript is a text file::

    # client-ip: 192.0.2.7
    # zone: example.zone          (DNS answers, from zone files beside the transcript)
    # config: vsl.toml            (optional)
    # Any other comment.          (a comment's first word may not end in ':')
    S: 220 *
    C: EHLO mail.example.test
    S: 250-*
    ...

    S: 250 2.0.0 *
    C: QUIT
    S: 221 *
    S: <closed>                   (the server closed the connection)
    Q: deliver                    (what was queued: see transcript_queue.py)
    Q: header X-Policy: checked*

``C:`` lines are sent by the client, ``S:`` lines are the replies the server must
give, in order; a ``*`` stands for the rest of the reply text, and a last line
(``S: 250 *``) for the continuation lines before it (``250-...``) as well. The dialogue
ends with an ``S:`` line, so that no reply goes unchecked. ``Q:`` lines follow it: they check the
messages the session queued, once it is over. The session runs over a socket pair
into the server's own protocol code, with every DNS look-up answered from the
transcript's zones, and a spool of its own.
"""
from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

from vsl.resolve import closest
from vsl.stdlib.support.state import MemoryStore

from . import config as config_module
from .app import Server
from .dnsd import DnsServer
from .transcript_queue import QueueCheck, check_queued, matches, parse_check

REPLY_TIMEOUT = 10.0
CLOSED = "<closed>"  # the S: text of a connection the server closed
_HEADERS = ("client-ip", "zone", "config")
_DIRECTIVE = re.compile(r"#\s*([\w-]+)\s*:(.*)")  # "# word: value"; other comments are free


class TranscriptError(ValueError):
    """A transcript that cannot be read (the message says file:line)."""


@dataclass
class Transcript:
    path: Path
    client_ip: str = "192.0.2.1"
    zones: list[Path] = field(default_factory=list)
    config: Path | None = None
    steps: list[tuple[int, str, str]] = field(default_factory=list)  # (line, "C"|"S", text)
    checks: list[QueueCheck] = field(default_factory=list)  # the Q: lines


def parse(path: Path) -> Transcript:
    """Read a transcript file."""
    transcript = Transcript(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise TranscriptError(f"{path}: cannot read: {err}") from None
    for number, line in enumerate(lines, 1):
        if line.startswith("#"):
            directive = _DIRECTIVE.fullmatch(line)
            if directive:
                _apply(transcript, f"{path}:{number}", directive[1].lower(),
                       directive[2].strip())
        elif line[:3] in ("C: ", "S: ") or line in ("C:", "S:"):
            if transcript.checks:
                raise TranscriptError(f"{path}:{number}: '{line[:40]}' follows a 'Q:' line: "
                                      "move the Q: lines after the dialogue")
            transcript.steps.append((number, line[0], line[3:]))
        elif line.startswith("Q: "):
            try:
                transcript.checks.append(parse_check(f"{path}:{number}", number, line[3:]))
            except ValueError as err:
                raise TranscriptError(str(err)) from None
        elif line.strip():
            raise TranscriptError(f"{path}:{number}: expected 'C: ', 'S: ', 'Q: ' or '#', got "
                                  f"{line[:40]!r}")
    if not any(kind == "S" for _, kind, _ in transcript.steps):
        raise TranscriptError(f"{path}: no 'S:' line to check")
    number, kind, text = transcript.steps[-1]
    if kind == "C":
        raise TranscriptError(f"{path}:{number}: 'C: {text}' is the last line, so its reply is "
                              "never checked: end with the S: line that answers it")
    return transcript


def _apply(transcript: Transcript, where: str, key: str, value: str) -> None:
    """One ``# key: value`` directive (``where`` is file:line for errors)."""
    if key == "client-ip":
        try:
            transcript.client_ip = str(ipaddress.ip_address(value))
        except ValueError:
            raise TranscriptError(f"{where}: '{value}' is not an IP address") from None
    elif key == "zone":
        transcript.zones.append(transcript.path.parent / value)
    elif key == "config":
        transcript.config = transcript.path.parent / value
    else:
        raise TranscriptError(f"{where}: unknown directive '# {key}:'{_suggestion(key)}")


def _suggestion(key: str) -> str:
    """The nearest directive, or the list of them."""
    near = closest(key, _HEADERS)
    if near:
        return f", did you mean '# {near}:'?"
    return (f" (known: {', '.join(_HEADERS)}; a comment's first word may not end "
            "in ':')")


@dataclass
class Outcome:
    transcript: Transcript
    problems: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems


def replay(transcript: Transcript, scripts: Path | None) -> Outcome:
    """Run one transcript against a fresh server; collect every mismatch."""
    with ExitStack() as stack:
        queue_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vsl-test-")))
        config = config_module.load(transcript.config)
        config = replace(config, queue_dir=queue_dir,
                         scripts=scripts or config.scripts or _beside(transcript))
        if transcript.zones:
            dns_server = stack.enter_context(DnsServer(transcript.zones))
            nameserver = f"127.0.0.1:{dns_server.port}"
            config = replace(config, dns=replace(config.dns, override=(nameserver,)))
        problems = asyncio.run(_session(Server(config, state=MemoryStore()), transcript))
    return Outcome(transcript, problems)


def _beside(transcript: Transcript) -> Path | None:
    directory = transcript.path.parent
    return directory if (directory / "main.vsl").exists() else None


async def _session(server: Server, transcript: Transcript) -> list[str]:
    server.services.admission.replay_peer = (transcript.client_ip, 49152)
    server_sock, client_sock = socket.socketpair()
    loop = asyncio.get_running_loop()
    await loop.connect_accepted_socket(lambda: server.protocol(server.config.listen[0]),
                                       sock=server_sock)
    reader, writer = await asyncio.open_connection(sock=client_sock)
    try:
        problems = await _dialogue(reader, writer, transcript.steps)
    finally:
        writer.close()
        await _settle()
    try:
        return problems + await check_queued(server.spool, transcript.checks)
    finally:
        await server.spool.close()


async def _dialogue(reader, writer, steps: list[tuple[int, str, str]]) -> list[str]:
    """Send the C: lines and compare each reply with its S: line, up to the first
    missing reply."""
    problems = []
    for number, kind, text in steps:
        if kind == "C":
            writer.write(text.encode("utf-8", "surrogateescape") + b"\r\n")
            continue
        try:
            line = await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT)
        except asyncio.TimeoutError:
            problems.append(f"line {number}: expected 'S: {text}', got no reply in "
                            f"{REPLY_TIMEOUT:g} s")
            break
        reply = line.decode("utf-8", "replace").rstrip("\r\n")
        while _skips(text, reply):  # "S: 250 *" stands for all of a multi-line 250 reply
            try:
                line = await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT)
            except asyncio.TimeoutError:
                break
            reply = line.decode("utf-8", "replace").rstrip("\r\n")
        if text == CLOSED:
            if line:
                problems.append(f"line {number}: expected 'S: {CLOSED}', got 'S: {reply}'")
            continue
        if not line:
            problems.append(f"line {number}: expected 'S: {text}', got 'S: {CLOSED}'")
            break
        if not matches(text, reply):
            problems.append(f"line {number}: expected 'S: {text}', got 'S: {reply}'")
    return problems


def _skips(expected: str, reply: str) -> bool:
    """Whether ``reply`` is a continuation line (``250-SIZE ...``) that the expected line,
    a last line of the same code (``250 *``), stands for: it is compared with the reply's
    last line, so adding an extension to EHLO breaks no transcript that says so."""
    return (len(reply) > 3 and reply[3] == "-" and reply[:3].isdigit()
            and expected[:3] == reply[:3] and expected[3:4] in ("", " "))


async def _settle() -> None:
    """Let the session finish what it started (a message being spooled, on_post_queue)
    before the queue is checked and the loop closes: the spool's writer thread reports
    back to this loop."""
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        await asyncio.wait(others, timeout=REPLY_TIMEOUT)
