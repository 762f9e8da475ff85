"""The private RabbitMQ node of tests/support/rabbitmq.py: it boots, answers AMQP, keeps a
durable queue's persistent message over a restart and over a crash, listens on loopback
only, and rabbitmqctl reaches it (never a system node, never a public epmd)."""
from __future__ import annotations

import asyncio
import ipaddress
import re
from pathlib import Path

import aio_pika

from tests.support.rabbitmq import amqp_answers


async def publish(url: str, queue: str, body: bytes) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        await channel.default_exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=queue)


async def take(url: str, queue: str) -> bytes | None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        message = await declared.get(fail=False)
        if message is None:
            return None
        await message.ack()
        return message.body


def test_restart_and_crash_keep_a_persistent_message(private_rabbitmq):
    broker = private_rabbitmq
    assert amqp_answers(broker.port)
    asyncio.run(publish(broker.url, "fixture.kept", b"after a stop"))
    broker.stop()
    assert not amqp_answers(broker.port) and not broker.pids()[1:]  # only epmd is left
    broker.start()
    assert asyncio.run(take(broker.url, "fixture.kept")) == b"after a stop"

    asyncio.run(publish(broker.url, "fixture.kept", b"after a crash"))
    broker.kill()
    broker.start()
    assert asyncio.run(take(broker.url, "fixture.kept")) == b"after a crash"
    pids = broker.pids()
    broker.close()
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


def test_listens_on_loopback_only(rabbitmq):
    pids = rabbitmq.pids()
    assert len(pids) == 3  # epmd, the script, the VM
    listeners = [address for pid in pids for address in listening_addresses(pid)]
    ports = {port for _, port in listeners}
    assert {rabbitmq.port, rabbitmq.dist_port, rabbitmq.epmd_port} <= ports
    assert all(ipaddress.ip_address(host).is_loopback for host, _ in listeners), listeners


def test_ctl_reaches_the_node(rabbitmq):
    asyncio.run(publish(rabbitmq.url, "fixture.ctl", b"x"))
    assert re.search(r"^fixture\.ctl\s+quorum$", rabbitmq.ctl("list_queues", "name", "type"),
                     re.M)


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(host, port) of every TCP socket of ``pid`` in the LISTEN state (IPv4 and IPv6;
    epmd adds ::1 to the address it is given)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                host, port = fields[1].split(":")
                found.append((hex_address(host), int(port, 16)))
    return found


def hex_address(host: str) -> str:
    """/proc/net/tcp's address (little-endian hex words) as text."""
    if len(host) == 8:
        return ".".join(str(b) for b in bytes.fromhex(host)[::-1])
    words = [bytes.fromhex(host[i:i + 8])[::-1] for i in range(0, 32, 8)]
    return str(ipaddress.IPv6Address(b"".join(words)))
