"""Faults of the broker, end to end: real `vsl serve` processes on a RabbitMQ queue, real
SMTP clients (design 16, section 3.10).

- The broker down at start: the server keeps running (one error, no traceback, the URL's
  password hidden, no CPU spent while it waits) and answers 451 4.3.0 at the end of DATA,
  as Postfix does for a queue it cannot write; once the broker is up, 250 and delivery.
- A login refused (password, vhost): exit 1 at once with one line naming the URL without
  its password.
- A memory alarm: 451 within ``confirm_timeout``, other sessions go on; 250 once it clears.
  (The publish that timed out is not withdrawn: the broker takes it when the alarm clears,
  so the client's retry of that message is a duplicate, an at-least-once window.)
- Poison in ``P.working``: to ``P.dead`` with ``x-vsl-why``; the next message is delivered.
- A message over the broker's size limit: a clean 451, and the next message gets 250.
- A message whose post-queue processing fails without a transition: retried after a
  pause, not at the speed the broker redelivers it.
"""
from __future__ import annotations

import asyncio
import contextlib
import smtplib
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.crash import VslProcess, write_config
from tests.support.mailsink import free_port
from tests.support.smtp_tools import wait_for

MESSAGE = b"From: alice@example.net\r\nSubject: faults\r\n\r\nhello\r\n"
QUEUE_WRITE_ERROR = (451, b"4.3.0 Error: queue file write error")


def serve(tmp_path: Path, url: str, prefix: str | None = None,
          confirm_timeout: float = 2, script: str | None = None) -> VslProcess:
    """`vsl serve` (every role) on the broker at ``url`` (read from a url_file), local mail
    to ``tmp_path/mail``, with ``script`` as main.vsl if given; started."""
    (tmp_path / "amqp.url").write_text(url)
    (tmp_path / "amqp.url").chmod(0o600)
    port = free_port()
    config = write_config(tmp_path, port, "mx.test", f"""\
[delivery]
maildir_root = "mail"
poll_interval = 0.1

[queue]
backend = "rabbitmq"
url_file = "amqp.url"
prefix = "{prefix or new_prefix()}"
confirm_timeout = {confirm_timeout}
connect_timeout = 2
""")
    if script is not None:
        (tmp_path / "scripts" / "main.vsl").write_text(script)
    server = VslProcess(config, port, tmp_path)
    server.start()
    return server


def new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def send(port: int, smtp: smtplib.SMTP | None = None) -> tuple[int, bytes]:
    """One message to bob@mx.test (on ``smtp``, else a session of its own); the reply to
    the end of DATA."""
    if smtp is None:
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as own:
            return send(port, own)
    smtp.ehlo_or_helo_if_needed()
    assert smtp.mail("alice@example.net")[0] == 250
    assert smtp.rcpt("bob@mx.test")[0] == 250
    return smtp.data(MESSAGE)


def delivered(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "mail" / "mx.test" / "bob" / "new").glob("*"))


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime, stime in clock ticks


@pytest.fixture
def unstarted_rabbitmq():
    """A private broker this test starts itself (closed at its end)."""
    from tests.support.rabbitmq import PrivateRabbitMQ
    broker = PrivateRabbitMQ()
    yield broker
    broker.close()


def test_broker_down_at_start_then_up(tmp_path, unstarted_rabbitmq):
    broker = unstarted_rabbitmq
    server = serve(tmp_path, broker.url)
    try:
        assert send(server.port) == QUEUE_WRITE_ERROR
        before = cpu_seconds(server.proc.pid)
        time.sleep(5)
        assert cpu_seconds(server.proc.pid) - before < 0.5
        broker.start()
        assert wait_for(lambda: send(server.port)[0] == 250, timeout=40, interval=1)
        assert wait_for(lambda: delivered(tmp_path), timeout=20)
        assert server.proc.poll() is None
    finally:
        server.stop()
    log = server.log.read_text()
    assert log.count("unreachable") == 1, log
    assert "Traceback" not in log and "secret" not in log


@pytest.mark.parametrize("change, why", [
    (dict(password="wrong"), "login refused"),
    (dict(vhost="nowhere"), "login refused (vhost unknown or not allowed)"),
])
def test_login_refused_exits_at_once(tmp_path, rabbitmq, change, why):
    with pytest.raises(RuntimeError, match=r"exited \(1\)"):
        serve(tmp_path, rabbitmq.url_with(**change))
    output = (tmp_path / "serve-1.log").read_text()
    shown = rabbitmq.url_with(**change).replace(f":{change.get('password', 'secret')}@",
                                                ":***@")
    *logged, error = output.strip().splitlines()
    assert error == f"Error: queue.url {shown}: {why}"
    assert all(" INFO " in line for line in logged), logged  # no error or traceback before it
    assert "secret" not in output and "wrong" not in output


@contextlib.asynccontextmanager
async def channel_on(url: str):
    """``async with``: a channel of a connection of the test's own to the broker."""
    import aio_pika
    connection = await aio_pika.connect(url)
    async with connection:
        yield await connection.channel()


async def publish_raw(url: str, queue: str, body: bytes) -> None:
    """``body`` straight into ``queue``, as no vSL process would write it."""
    import aio_pika
    async with channel_on(url) as channel:
        await channel.default_exchange.publish(
            aio_pika.Message(body, message_id="poison", delivery_mode=2), routing_key=queue)


async def take_all(url: str, queue: str) -> list:
    """Every message of ``queue``, acked (taken off it)."""
    taken = []
    async with channel_on(url) as channel:
        declared = await channel.declare_queue(queue, passive=True)
        while (message := await declared.get(no_ack=True, fail=False)) is not None:
            taken.append(message)
    return taken


def test_poison_in_working_goes_to_dead(tmp_path, rabbitmq):
    prefix = new_prefix()
    server = serve(tmp_path, rabbitmq.url, prefix)
    try:
        asyncio.run(publish_raw(rabbitmq.url, f"{prefix}.working", b"\x00garbage"))
        assert send(server.port)[0] == 250
        assert wait_for(lambda: delivered(tmp_path), timeout=20)
    finally:
        server.stop()
    (dead,) = asyncio.run(take_all(rabbitmq.url, f"{prefix}.dead"))
    assert dead.body == b"\x00garbage" and dead.message_id == "poison"
    assert dead.headers["x-vsl-why"]


@pytest.fixture(scope="module")
def altered_rabbitmq():
    """A private broker for the tests that change its settings (each one restores them)."""
    from tests.support.rabbitmq import PrivateRabbitMQ
    with PrivateRabbitMQ() as broker:
        yield broker


def test_memory_alarm_gives_451_within_confirm_timeout(tmp_path, altered_rabbitmq):
    broker = altered_rabbitmq
    server = serve(tmp_path, broker.url)
    try:
        assert send(server.port)[0] == 250
        broker.ctl("set_vm_memory_high_watermark", "absolute", "50MB")
        try:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=15) as other, \
                    ThreadPoolExecutor(1) as pool:
                other.ehlo()
                started = time.monotonic()
                blocked = pool.submit(send, server.port)
                time.sleep(0.5)  # its publish waits for a confirm meanwhile
                assert other.noop()[0] == 250  # another session is not stalled
                assert time.monotonic() - started < 1.5
                assert blocked.result() == QUEUE_WRITE_ERROR
                assert time.monotonic() - started < 2 + 1.5  # confirm_timeout, and a margin
        finally:
            broker.ctl("set_vm_memory_high_watermark", "0.4")
        assert wait_for(lambda: send(server.port)[0] == 250, timeout=20, interval=0.5)
    finally:
        server.stop()


def test_message_over_the_brokers_limit_gives_451(tmp_path, altered_rabbitmq):
    broker = altered_rabbitmq
    # a channel reads the limit when it opens: lowered before the server connects
    broker.ctl("eval", "application:set_env(rabbit, max_message_size, 65536).")
    server = serve(tmp_path, broker.url)
    try:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=15) as smtp:
            smtp.ehlo()
            smtp.mail("alice@example.net")
            smtp.rcpt("bob@mx.test")
            assert smtp.data(MESSAGE + (b"x" * 70 + b"\r\n") * 1500) == QUEUE_WRITE_ERROR
            assert send(server.port, smtp)[0] == 250
    finally:
        broker.ctl("eval", "application:set_env(rabbit, max_message_size, 134217728).")
        server.stop()
    assert "Traceback" not in server.log.read_text()


QUARANTINING = """
fn on_rcpt_to(ctx) { status::accept() }
fn on_post_queue(ctx) { status::quarantine("spam") }
"""


async def delete_queues(url: str, *queues: str) -> None:
    async with channel_on(url) as channel:
        for queue in queues:
            await channel.queue_delete(queue)


def test_a_failing_message_is_not_retried_at_full_speed(tmp_path, rabbitmq):
    prefix = new_prefix()
    server = serve(tmp_path, rabbitmq.url, prefix, script=QUARANTINING)
    try:  # with no quarantine queue, on_post_queue's move fails: the claim is released
        asyncio.run(delete_queues(rabbitmq.url, f"{prefix}.quarantine", f"{prefix}.hold"))
        assert send(server.port)[0] == 250
        time.sleep(4)
    finally:
        server.stop()
    failures = server.log.read_text().count(f"no queue {prefix}.quarantine")
    assert 2 <= failures <= 4  # at 0 s, then after pauses of 1 and 2 s
