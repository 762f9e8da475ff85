"""Crash safety over a broker (design 16, section 3.7), as tests/test_crash_safety.py for
the spool: concurrent clients send through two `vsl serve --role receiver` processes; a
`--role worker` runs on_post_queue and a `--role delivery` relays to a sink process, all
sharing one private RabbitMQ node. At seeded moments a receiver, the worker or delivery is
SIGKILLed and started again after a short pause, and in one scenario the broker itself
(SIGKILL of its VM, then a restart). Once the clients are done and the broker's working,
deliver and deferred queues are empty, every message that got a 250 has reached the sink,
nothing is left on the broker (what is, is listed by Message-ID), and copies beyond the
first stay within the at-least-once windows of what was killed."""
from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest

from vsl.server.config import Config, load
from vsl.server.queue_backend import QueueError
from tests.support.crash import (Clients, SinkProcess, VslProcess, broker_counts,
                                 broker_message_ids, relay_section, write_config)
from tests.support.mailsink import free_port
from tests.support.smtp_tools import wait_for

N = 1500  # messages acknowledged (250 to the final dot) per run
THREADS = 8  # concurrent clients, spread over both receivers
CONCURRENCY = 10  # [delivery] concurrency, and the prefetch of every consumer
RECEIVERS = ("receiver-a", "receiver-b")
ROLES = {"receiver-a": "receiver", "receiver-b": "receiver", "worker": "worker",
         "delivery": "delivery"}
PENDING = ("working", "deliver", "deferred")  # queues a drained broker has emptied

# name: (seed, kills: (whom, window as fractions of N acknowledged), the sink's first
# answer to one Message-ID in K is 451 (0: none), so that messages wait in P.deferred.*
# when the broker dies). "none" is the control: without a crash every message arrives
# exactly once.
SCENARIOS = {
    "processes": (11, [("receiver-a", 0.05, 0.15), ("worker", 0.2, 0.3),
                       ("delivery", 0.35, 0.45), ("receiver-b", 0.5, 0.6),
                       ("worker", 0.65, 0.75), ("delivery", 0.8, 0.9)], 0),
    "broker": (22, [("delivery", 0.1, 0.2), ("broker", 0.3, 0.45), ("worker", 0.55, 0.65),
                    ("receiver-a", 0.7, 0.8)], 10),
    "none": (33, [], 0),
}


def role_config(directory: Path, port: int, sink_port: int, url: str, prefix: str) -> Path:
    """Every recipient accepted, the queue on the broker under ``prefix``, relayed to the
    sink."""
    directory.mkdir()
    return write_config(directory, port, "mx.crash.test", f"""\
[queue]
backend = "rabbitmq"
url = "{url}"
prefix = "{prefix}"
confirm_timeout = 5
connect_timeout = 2

{relay_section(sink_port, CONCURRENCY)}""")


def duplicate_bound(config: Config, kills: list[dict]) -> int:
    """How many extra copies the kills may cause (design 16, section 3.7)."""
    window = {
        # confirmed, but the 250 was not written: the client resends with a new Message-ID
        "receiver": 0,
        # published to deliver, working not yet acked: each on_post_queue running
        "worker": config.script_threads,
        # the remote's 250 in, deliver not yet acked: each delivery running
        "delivery": config.delivery.concurrency,
        # publishes in flight, kept though unconfirmed: the worker's and delivery's
        "broker": config.script_threads + config.delivery.concurrency,
    }
    return sum(window[ROLES.get(kill["who"], kill["who"])] for kill in kills)


@contextmanager
def deployment(tmp_path: Path, url: str, prefix: str, tempfail_every: int):
    """The sink and the four `vsl serve` processes, started; yields (sink, processes by
    name) and stops them all (what they hold goes back to the broker's queues)."""
    sink = SinkProcess(tmp_path, tempfail_every)
    processes: dict[str, VslProcess] = {}
    try:
        sink.start()
        for name, role in ROLES.items():
            port = free_port()  # a worker or delivery binds none
            config = role_config(tmp_path / name, port, sink.port, url, prefix)
            processes[name] = VslProcess(config, port, tmp_path / name, role)
            processes[name].start()
        yield sink, processes
    finally:
        for process in processes.values():
            process.stop()
        sink.stop()


class Restarts:
    """Kills, each followed by a restart in a thread of its own after a pause, so mail
    flows on meanwhile (a process starts in seconds); a victim is killed again only once
    it is back."""

    def __init__(self):
        self.threads: dict[str, threading.Thread] = {}
        self.failures: list[str] = []

    def kill(self, who: str, victim, pause: float) -> None:
        """SIGKILL ``victim`` (a VslProcess or the broker) now, start it after ``pause``."""
        if who in self.threads:
            self.threads.pop(who).join()
        victim.kill()
        self.threads[who] = threading.Thread(target=self._restart, args=(who, victim, pause),
                                             name=f"restart-{who}")
        self.threads[who].start()

    def _restart(self, who: str, victim, pause: float) -> None:
        time.sleep(pause)
        try:
            victim.start()
        except RuntimeError as err:
            self.failures.append(f"{who}: {err}")

    def join(self) -> list[str]:
        """Wait for every restart; what failed."""
        for thread in self.threads.values():
            thread.join()
        return self.failures


def pending(url: str, prefix: str) -> dict[str, int]:
    """Ready messages of the queues a drained broker has emptied (none: {})."""
    counts = broker_counts(url, prefix)
    return {queue: counts[queue] for queue in PENDING if counts[queue]}


def backlog(url: str, prefix: str) -> dict[str, int] | str:
    """What waits on the broker at a kill (for the report)."""
    try:
        return pending(url, prefix)
    except QueueError:  # restarting
        return "broker down"


def logs(processes: dict[str, VslProcess]) -> str:
    """The tail of every process's logs, by name."""
    return "\n".join(f"=== {name}\n{process.logs()}" for name, process in processes.items())


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sigkill_over_a_broker_loses_no_acknowledged_message(tmp_path, private_rabbitmq,
                                                             scenario):
    seed, plan, tempfail_every = SCENARIOS[scenario]
    rng = random.Random(seed)
    kill_at = sorted((max(1, int(rng.uniform(low, high) * N)), who) for who, low, high in plan)
    broker, prefix = private_rabbitmq, f"crash-{scenario}"
    kills: list[dict] = []
    started = time.monotonic()

    with deployment(tmp_path, broker.url, prefix, tempfail_every) as (sink, processes):
        victims = {**processes, "broker": broker}
        ports = tuple(processes[name].port for name in RECEIVERS)
        clients = Clients(ports, N, threads=THREADS, seed=seed, tag=scenario).start()
        restarts = Restarts()
        try:
            deadline = time.monotonic() + 90
            for at, who in kill_at:
                while clients.acked_count < at:
                    assert time.monotonic() < deadline, (clients.acked_count, clients.outcomes)
                    time.sleep(0.002)
                time.sleep(rng.uniform(0, 0.03))  # a random moment, not just after a 250
                kills.append({"who": who, "acked": clients.acked_count,
                              "backlog": backlog(broker.url, prefix)})
                restarts.kill(who, victims[who], pause=rng.uniform(0, 0.5))
            assert clients.join(90), (clients.acked_count, clients.outcomes)
        finally:
            clients.stop()
            assert not restarts.join(), restarts.failures
        acked = set(clients.acked)
        wait_for(lambda: acked <= set(sink.received()) and not pending(broker.url, prefix),
                 timeout=60, interval=0.5)
        config = load(processes["worker"].config)  # every role's, but for its listener
        process_logs = logs(processes)

    # for a post-mortem: which queue id each acknowledged Message-ID got
    (tmp_path / "acknowledged.json").write_text(json.dumps(clients.acked, indent=0))
    received = Counter(sink.received())
    left = broker_message_ids(broker.url, prefix)
    on_broker = {mid for mids in left.values() for mid in mids}
    lost = sorted(m for m in acked if not received[m] and m not in on_broker)
    duplicates = {m: c for m, c in received.items() if c > 1}
    extra = sum(count - 1 for count in duplicates.values())
    bound = duplicate_bound(config, kills)
    print(f"\n[{scenario}] {time.monotonic() - started:.1f} s; sent "
          f"{len(clients.attempted)}, acknowledged {len(acked)}, delivered {len(received)} "
          f"distinct ({sum(received.values())} in all; {len(set(received) - acked)} never "
          f"acknowledged), lost {len(lost)}, duplicated {len(duplicates)} ({extra} extra "
          f"copies, bound {bound}), left on the broker "
          f"{ {q: len(m) for q, m in left.items()} }; kills {kills}; client errors "
          f"{dict(clients.outcomes)}")

    assert len(acked) >= N
    assert len(kills) == len(kill_at)
    assert not lost, f"{len(lost)} acknowledged message(s) lost: {lost[:10]}\n{process_logs}"
    # No role moves mail to hold or dead for a crash: what a drained broker holds is a bug.
    assert not left, f"left on the broker: {left}\n{process_logs}"
    assert set(received) <= set(clients.attempted), "the sink got messages nobody sent"
    assert extra <= bound, duplicates
    if not kills:
        assert not duplicates and set(received) == acked, duplicates
