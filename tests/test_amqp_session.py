"""An SMTP session while things fail around it, on a RabbitMQ queue (design 16, section
3.10): a receiver killed mid-DATA queued nothing (it gave no 250); the broker stopped
between two messages of one session gives 451, and once it is back the same session's
next message gets 250 (the server reconnects, the client does not)."""
from __future__ import annotations

import asyncio
import smtplib
import socket

from tests.support.smtp_tools import wait_for
from tests.test_amqp_faults import (MESSAGE, QUEUE_WRITE_ERROR, channel_on, delivered,
                                    new_prefix, send, serve)


async def ready_counts(url: str, prefix: str, *queues: str) -> dict[str, int]:
    """Messages ready in each of the broker's ``<prefix>.<queue>``."""
    counts = {}
    async with channel_on(url) as channel:
        for queue in queues:
            declared = await channel.declare_queue(f"{prefix}.{queue}", passive=True)
            counts[queue] = declared.declaration_result.message_count
    return counts


def test_receiver_killed_mid_data_queues_nothing(tmp_path, rabbitmq):
    prefix = new_prefix()
    server = serve(tmp_path, rabbitmq.url, prefix)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
            replies = client.makefile("rb")
            replies.readline()  # the greeting
            for command in (b"EHLO client.test", b"MAIL FROM:<alice@example.net>",
                            b"RCPT TO:<bob@mx.test>", b"DATA"):
                client.sendall(command + b"\r\n")
                while (reply := replies.readline())[3:4] == b"-":
                    pass
                assert reply[:1] in (b"2", b"3"), reply
            client.sendall(MESSAGE[:-2])  # no final dot
            server.kill()
    finally:
        server.stop()
    counts = asyncio.run(ready_counts(rabbitmq.url, prefix, "working", "deliver"))
    assert counts == {"working": 0, "deliver": 0}
    assert not delivered(tmp_path)


def test_broker_stopped_mid_session_then_back(tmp_path, private_rabbitmq):
    broker = private_rabbitmq
    server = serve(tmp_path, broker.url)
    try:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=15) as smtp:
            assert send(server.port, smtp)[0] == 250
            broker.stop()
            assert send(server.port, smtp) == QUEUE_WRITE_ERROR
            broker.start()
            assert wait_for(lambda: send(server.port, smtp)[0] == 250, timeout=40,
                            interval=1)
        assert wait_for(lambda: len(delivered(tmp_path)) == 2, timeout=20)
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text()
