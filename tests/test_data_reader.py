"""server/smtp.py: the chunked DATA reader and the per-class set-up of FastSMTP, checked
against aiosmtpd's own line-by-line SMTP, and the real server fed a byte at a time."""
from __future__ import annotations

import asyncio
import random
import time

import pytest
from aiosmtpd.smtp import SMTP

from vsl.server.protocol import NOT_POSTFIX, Protocol
from vsl.server.session import Session
from vsl.server.smtp import TOO_LONG, TOO_MUCH, ClientReader, FastSMTP, read_data
from tests.support.servers import config_for, running
from tests.support.smtp_tools import Raw, queued_id

LIMIT = 5000  # message size limit of the compared servers


class Keep:
    """A handler that keeps the last message."""

    def __init__(self):
        self.content = None

    async def handle_DATA(self, server, session, envelope):
        self.content = envelope.original_content
        assert envelope.content is envelope.original_content
        return "250 kept"


async def _dialogue(port: int, body: bytes, chunk_sizes) -> tuple[bytes, bytes]:
    """MAIL, RCPT, DATA, then ``body`` written in chunks, then NOOP: (the reply to the
    body, the reply to NOOP): the NOOP shows what the reader left in the stream."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    for command in (b"HELO x", b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.test>",
                    b"DATA"):
        writer.write(command + b"\r\n")
        await reader.readline()
    position = 0
    while position < len(body):
        size = next(chunk_sizes)
        writer.write(body[position:position + size])
        await writer.drain()
        await asyncio.sleep(0)
        position += size
    writer.write(b"NOOP\r\n")
    replies = (await reader.readline(), await reader.readline())
    writer.close()
    return replies


def _compare(bodies) -> None:
    """Every body, in random chunks, gets the same replies and content from aiosmtpd's
    SMTP and from FastSMTP."""

    async def main():
        results = {}
        for name, factory in (("aiosmtpd", lambda h: SMTP(h, data_size_limit=LIMIT,
                                                          hostname="h")),
                              ("fast", lambda h: FastSMTP(h, hostname="h", ident="i",
                                                          data_size_limit=LIMIT))):
            handler = Keep()
            server = await asyncio.get_running_loop().create_server(
                lambda: factory(handler), "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            rng = random.Random(7)
            results[name] = []
            for body in bodies:
                handler.content = None
                replies = await _dialogue(port, body, iter(lambda: rng.choice(
                    [1, 2, 3, 5, 64, 1000, 4096, 70000]), None))
                results[name].append((replies, handler.content))
            server.close()
            await server.wait_closed()
        for body, ours, theirs in zip(bodies, results["fast"], results["aiosmtpd"]):
            assert ours == theirs, body[:200]

    asyncio.run(main())


def test_same_as_aiosmtpd_on_edge_cases():
    _compare([
        b".\r\n",                                   # an empty message
        b"\r\n.\r\n",                               # one empty line
        b"a\r\n.\r\n",
        b"..\r\n.\r\n",                             # a line that is one (stuffed) dot
        b"..x\r\n.y\r\n...\r\n.\r\n",               # leading dots, stuffed or not
        b"a\n.\nb\r\n.\r\n",                        # bare LF: "\n.\n" ends nothing
        b"a\r\n.\nb\r\n.\r\n",
        b"a\n.\r\nb\r\n.\r\n",
        b"a\r.\r\n.\r\n",
        b"x.\r\nx\r\n.\r\n",                        # ".\r\n" not at a line start
        b"\r\n\r\n.\r\n",
        b"a\r\n.\r\nNOOP\r\n",                      # pipelined: NOOP answered twice
        b"x" * 998 + b"\r\n.\r\n",                  # the longest line allowed ...
        b"." + b"x" * 998 + b"\r\n.\r\n",           # ... and with a stuffed dot
        b"x" * 999 + b"\r\n.\r\n",                  # one byte too long: 500
        b"x" * 20000 + b"\r\n.\r\n",                # far too long and too big
        b"y\r\n" * 1665 + b".\r\n",                 # 4995 bytes: under the limit
        b"y\r\n" * 1666 + b"yy\r\n.\r\n",           # 5002 bytes: 552
        b"y" * (LIMIT - 2) + b"\r\n.\r\n",          # too long a line in a message at the limit
        (b"z" * 80 + b"\r\n") * 59 + b"z" * 2000 + b"\r\n.\r\n",  # long line past the limit
    ])


def test_same_as_aiosmtpd_on_random_messages():
    rng = random.Random(1)
    pieces = [b"a", b"bc", b"\r\n", b"\n", b"\r", b".", b"..", b"\r\n.", b"\r\n..",
              b"\r\n.x", b"x" * 300, b"y" * 999]
    bodies = []
    for _ in range(150):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        bodies.append(body.replace(b"\r\n.\r\n", b"\r\n..\r\n") + b"\r\n.\r\n")
    _compare(bodies)


def _fed(*chunks: bytes) -> ClientReader:
    reader = ClientReader(limit=1001)
    for chunk in chunks:
        reader.feed_data(chunk)
    return reader


def test_end_split_at_every_point_and_what_follows_stays():
    stream = b"Subject: s\r\n\r\n..one\r\ntwo.\r\n.\r\nQUIT\r\n"

    async def main():
        for cut in range(1, len(stream)):
            reader = _fed(stream[:cut])
            task = asyncio.ensure_future(read_data(reader, 10_000, 1001))
            await asyncio.sleep(0)
            reader.feed_data(stream[cut:])
            assert await task == (b"Subject: s\r\n\r\n.one\r\ntwo.\r\n", None), cut
            assert await reader.readline() == b"QUIT\r\n"

    asyncio.run(main())


def test_size_limit_reads_to_the_end():
    async def main():
        reader = _fed(*(b"x" * 98 + b"\r\n" for _ in range(100)))
        reader.feed_data(b".\r\nNOOP\r\n")
        assert await read_data(reader, 5000, 1001) == (b"", TOO_MUCH)
        assert await reader.readline() == b"NOOP\r\n"
        reader = _fed(b"x" * 1000 + b"\r\n.\r\n")
        assert await read_data(reader, None, 1001) == (b"", TOO_LONG)

    asyncio.run(main())


def test_a_large_message():
    line = b"." + bytes(range(33, 127)) + b"\r\n"
    body = line * 60_000  # 5.8 MB

    async def main():
        reader = asyncio.StreamReader(limit=1001)
        task = asyncio.ensure_future(read_data(reader, 10_000_000, 1001))
        for start in range(0, len(body), 65536):
            reader.feed_data(body[start:start + 65536])
            await asyncio.sleep(0)
        reader.feed_data(b".\r\n")
        content, error = await task
        assert error is None and content == body.replace(b"\r\n.", b"\r\n")[1:]

    asyncio.run(main())


def test_end_of_stream_during_data_is_a_lost_connection():
    async def main():
        reader = _fed(b"partial\r\n")
        reader.feed_eof()
        with pytest.raises(asyncio.CancelledError):
            await read_data(reader, 1000, 1001)

    asyncio.run(main())


def test_the_server_fed_a_byte_at_a_time(tmp_path):
    body = b"Subject: slow\r\n\r\n..dot\r\nend.\r\n\r\n"
    with running(config_for(tmp_path)) as server:
        with Raw(server) as raw:
            raw.cmd("EHLO slow.test")
            assert raw.cmd("MAIL FROM:<a@example.org>")[0] == 250
            assert raw.cmd("RCPT TO:<bob@example.test>")[0] == 250
            assert raw.cmd("DATA")[0] == 354
            for byte in body + b".\r\n":
                raw.send(bytes([byte]))
                time.sleep(0.002)  # one TCP segment each
            code, text = raw.reply()
            assert code == 250, (code, text)
            assert raw.cmd("MAIL FROM:<a@example.org>")[0] == 250
            assert raw.cmd("RCPT TO:<bob@example.test>")[0] == 250
            assert raw.cmd("DATA")[0] == 354
            code, text2 = raw.cmd(".")  # an empty message
            assert code == 250, (code, text2)
        message = asyncio.run(server.spool.message(queued_id(text)))
        assert message.startswith(b"Received: ")
        assert message.endswith(b"\r\nSubject: slow\r\n\r\n.dot\r\nend.\r\n\r\n")


def test_fast_setup_matches_aiosmtpd(tmp_path):
    """FastSMTP.__init__ leaves the state aiosmtpd's __init__ would (same attributes, same
    values, methods bound alike): a new aiosmtpd version that changes it fails here."""
    with running(config_for(tmp_path)) as server:
        async def build():
            ours = server.protocol(server.config.listen[0])
            theirs = Protocol.__new__(Protocol)
            handler = Session(server.services, ours.listener)
            SMTP.__init__(theirs, handler, hostname=ours.hostname, ident=ours.__ident__,
                          data_size_limit=ours.data_size_limit, enable_SMTPUTF8=True,
                          timeout=ours._timeout_duration,
                          auth_require_tls=ours._auth_require_tls,
                          auth_exclude_mechanism=["PLAIN", "LOGIN"])
            return ours, theirs

        ours, theirs = asyncio.run_coroutine_threadsafe(build(), server.loop).result(5)
    # Protocol then drops the commands Postfix has not (an unknown command's method answers)
    theirs._smtp_methods = {name: method for name, method in theirs._smtp_methods.items()
                            if name not in NOT_POSTFIX}
    assert ours._smtp_methods.get("EXPN") == ours._smtp_methods.get("FOO") == \
        ours.unknown_command
    mine = {k: v for k, v in vars(ours).items()
            if k not in ("settings", "listener", "errors", "overshoot", "junk", "moved_mail_at",
                         "busy", "command_started", "command", "argument", "in_helo",
                         "greeting", "counts", "connected_at", "open")}
    assert mine.keys() == vars(theirs).keys()

    def same(a, b) -> bool:
        if hasattr(a, "__self__") and hasattr(a, "__func__"):  # bound methods
            return a.__func__ is b.__func__ and type(a.__self__) is type(b.__self__)
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, tuple):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return a == b or isinstance(a, type(b)) and not isinstance(a, (str, int, float, bool))

    for key in mine:
        assert same(mine[key], vars(theirs)[key]), key
