"""The metrics endpoint of a real `vsl serve` (workers 1 and 2, --metrics-listen on a
loopback port): /metrics parses as Prometheus text and counts the spool's queues,
/healthz and /readyz answer (503 naming the spool when its tmp/ is gone), other paths and
methods are refused, a client that sends nothing is cut after 5 s; a metrics port in use
stops the start before any worker and before the spool's recovery; a killed worker is
restarted and no counter drops. Then the HTTP server on its own: single-flight scrapes on
a thread of their own, the connection cap, the deadline, stop, a 500, hostile Accept."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import smtplib
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support import scrape
from vsl.server.metrics_http import FRESH
from tests.support.crash import VSL, stop_process, write_config
from tests.support.mailsink import free_port, listening
from tests.support.smtp_tools import wait_for
from tests.support.workers import worker_pids_in



class Served:
    """`vsl serve --metrics-listen 127.0.0.1:<port>` on a spool in ``directory``."""

    def __init__(self, directory, workers: int, sections: str = ""):
        self.directory, self.smtp_port, self.port = directory, free_port(), free_port()
        self.config = write_config(directory, self.smtp_port, "mx.metrics.test",
                                   f"[delivery]\nenabled = false\n{sections}",
                                   workers=workers)
        self.log = directory / "serve.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> subprocess.Popen:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [VSL, "serve", "--config", str(self.config),
                 "--metrics-listen", f"127.0.0.1:{self.port}"],
                cwd=self.directory, stdout=log, stderr=log)
        return self.proc

    def wait_ready(self, timeout: float = 20) -> None:
        assert wait_for(lambda: self.proc.poll() is not None or
                        self.get("/readyz")[0] == 200, timeout), self.log.read_text()
        assert self.proc.poll() is None, self.log.read_text()

    def get(self, path: str, method: str = "GET") -> tuple[int, str]:
        return scrape.get(self.port, path, method)

    def samples(self) -> dict[tuple, float]:
        return scrape.samples(self.port)

    def metrics_dir(self) -> Path:
        """The multiprocess directory, from the files the server process maps."""
        maps = Path(f"/proc/{self.proc.pid}/maps").read_text()
        return Path(re.search(r"(/\S+)/counter_\d+\.db", maps).group(1))

    def workers(self) -> dict[int, int]:
        return worker_pids_in(self.log.read_text())

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def served(tmp_path):
    made = []

    def start(workers: int, sections: str = "") -> Served:
        server = Served(tmp_path, workers, sections)
        made.append(server)
        server.start()
        server.wait_ready()
        return server
    yield start
    for server in made:
        server.stop()


def send_one(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=5) as smtp:
        smtp.sendmail("sender@clients.test", ["rcpt@remote.test"],
                      b"Subject: metrics\r\n\r\nhello\r\n")


def test_one_process_serves_its_endpoint(served, tmp_path):
    server = served(1)
    send_one(server.smtp_port)
    found = server.samples()
    assert found[("vsl_build_info", (("version", "0.1.0"),))] == 1
    assert found[("vsl_queue_messages", (("queue", "deliver"),))] == 1
    assert 0 <= found[("vsl_queue_oldest_age_seconds", (("queue", "deliver"),))] < 60
    assert found[("vsl_worker_restarts_total", ())] == 0
    assert server.get("/healthz") == (200, "ok\n")
    assert server.get("/readyz") == (200, "ready\n")
    assert server.get("/metrics", "HEAD") == (200, "")
    assert server.get("/nothing")[0] == 404
    assert server.get("/metrics", "POST")[0] == 405

    (tmp_path / "queue" / "tmp").rename(tmp_path / "queue" / "tmp-away")
    status, text = server.get("/readyz")
    assert status == 503 and text.startswith("spool: ") and "tmp is not writable" in text
    (tmp_path / "queue" / "tmp-away").rename(tmp_path / "queue" / "tmp")
    assert server.get("/readyz")[0] == 200

    private = server.metrics_dir()
    assert (private / "ready" / "0").read_text() == str(server.proc.pid)
    server.stop()  # SIGTERM
    assert not private.exists()


def test_openmetrics_is_negotiable(served):
    server = served(1)
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/metrics", headers={
        "Accept": "application/openmetrics-text; version=1.0.0"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.headers["Content-Type"].startswith("application/openmetrics-text")
        assert answer.read().decode().endswith("# EOF\n")


def test_a_silent_client_is_cut_after_five_seconds(served):
    server = served(1)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(15)
        start = time.monotonic()
        assert sock.recv(100) == b""
        assert 4.5 < time.monotonic() - start < 10
    assert server.get("/healthz")[0] == 200


@pytest.mark.parametrize("workers", [1, 2])
def test_a_metrics_port_in_use_stops_the_start(tmp_path, workers):
    server = Served(tmp_path, workers)
    stale = tmp_path / "queue" / "tmp" / "unacknowledged"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"a message half written")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", server.port))
        holder.listen(1)
        proc = server.start()
        try:
            assert proc.wait(30) == 1
        finally:
            server.stop()
    log = server.log.read_text()
    assert f"cannot listen: metrics 127.0.0.1:{server.port}: " in log
    assert "started" not in log and not listening(server.smtp_port)
    assert stale.exists()  # the start stopped before the spool's recovery


def _listening_inode(port: int) -> str:
    """The inode of the socket listening on the loopback ``port`` (/proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            return fields[9]
    raise AssertionError(f"nothing listens on {port}")


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            found.add(target[len("socket:["):-1])
    return found


def test_each_child_holds_only_the_sockets_it_serves(served):
    server = served(2)
    exporter = int(re.search(r"exporter started \(pid (\d+)\)",
                             server.log.read_text()).group(1))
    smtp, metrics_socket = _listening_inode(server.smtp_port), _listening_inode(server.port)
    assert _socket_inodes(exporter) & {smtp, metrics_socket} == {metrics_socket}
    for pid in server.workers().values():
        assert _socket_inodes(pid) & {smtp, metrics_socket} == {smtp}


def test_a_killed_worker_is_restarted_and_no_counter_drops(served):
    server = served(2)
    send_one(server.smtp_port)
    before = server.samples()
    first = server.workers()
    os.kill(first[1], signal.SIGKILL)
    assert wait_for(lambda: server.workers()[1] != first[1], timeout=10)
    assert wait_for(lambda: server.get("/readyz")[0] == 200, timeout=10)
    time.sleep(FRESH)  # a scrape is served again for this long
    after = server.samples()
    assert after[("vsl_worker_restarts_total", ())] == 1
    counters = [key for key in before if key[0].endswith(("_total", "_count", "_sum",
                                                          "_bucket"))]
    assert counters and all(after[key] >= before[key] for key in counters)
    assert after[("vsl_queue_messages", (("queue", "deliver"),))] == 1
    assert server.get("/healthz")[0] == 200

    server.proc.send_signal(signal.SIGHUP)  # the workers reload; the exporter goes on
    assert wait_for(lambda: "SIGHUP: reloading the scripts in 2 worker(s)" in
                    server.log.read_text(), timeout=5)
    time.sleep(0.5)
    assert server.get("/healthz")[0] == 200 and "exporter (pid" not in server.log.read_text()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0


def test_a_request_head_over_8_kib_is_refused(served):
    server = served(1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n")
        answer = sock.recv(200)
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_on_a_broker_the_queues_are_counted_and_readiness_asks_it(served, private_rabbitmq):
    server = served(2, f'[queue]\nbackend = "rabbitmq"\nurl = "{private_rabbitmq.url}"\n'
                       f'prefix = "metrics"\n')
    found = server.samples()
    assert ("vsl_queue_messages", (("queue", "deliver"),)) in found
    assert not [key for key in found if key[0] == "vsl_queue_oldest_age_seconds"]
    private_rabbitmq.stop()
    status, text = server.get("/readyz")
    assert status == 503 and re.search(r"^broker: ", text, re.M), text
    assert server.get("/metrics")[0] == 200  # without the queue gauges


def test_the_exporter_child_is_unhealthy_once_its_parent_is_gone(tmp_path):
    from dataclasses import replace

    from vsl.server.config import load
    from vsl.server.exporter import Exporter

    config = replace(load(None), queue_dir=tmp_path / "queue")
    assert asyncio.run(Exporter(config, 1).health()) == []
    assert asyncio.run(Exporter(config, 1, parent=os.getppid()).health()) == []
    assert asyncio.run(Exporter(config, 1, parent=-7).health()) == ["parent pid -7 is gone"]


def test_a_bad_metrics_address_is_refused(tmp_path):
    run = subprocess.run([VSL, "serve", "--metrics-listen", "nowhere"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 1 and "--metrics-listen" in run.stderr


def test_readiness_asks_redis(tmp_path):
    server = Served(tmp_path, 1, f'[state]\nbackend = "redis"\n'
                                 f'url = "redis://127.0.0.1:{free_port()}/0"\n')
    server.start()
    try:
        assert wait_for(lambda: re.fullmatch(r"redis: .+\n", server.get("/readyz")[1]),
                        timeout=20), server.log.read_text()
        assert server.get("/readyz")[0] == 503
    finally:
        server.stop()


# -- the HTTP server on its own (workers = 1 shares the SMTP loop with it) ---------------
async def _ok() -> list[str]:
    return []


class Endpoint:
    """A MetricsHttp on a loopback port, serving ``body`` (made by ``make``) and
    counting the scrapes and the threads they ran on."""

    def __init__(self, body: bytes = b"x 1\n", make=None):
        from vsl.server.metrics_http import MetricsHttp

        self.body, self.scrapes, self.threads = body, 0, set()
        self.make = make or self._make
        self.http = MetricsHttp(lambda accept: ("text/plain", self.make), _ok, _ok)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(100)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def _make(self) -> bytes:
        import threading

        self.scrapes += 1
        self.threads.add(threading.current_thread().name)
        time.sleep(0.2)
        return self.body

    async def __aenter__(self):
        await self.http.start([self.sock])
        return self

    async def __aexit__(self, *exc):
        await asyncio.wait_for(self.http.stop(), 5)

    async def request(self, head: bytes = b"GET /metrics HTTP/1.1\r\n\r\n") -> bytes:
        """The answer to ``head`` (b"" when the connection is closed or reset)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(head)
            return await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:
            return b""
        finally:
            writer.close()


def test_concurrent_scrapes_share_one_collect_on_a_thread_of_their_own():
    async def main():
        async with Endpoint() as endpoint:
            answers = await asyncio.gather(*(endpoint.request() for _ in range(8)))
            assert all(a.startswith(b"HTTP/1.1 200 ") and a.endswith(b"x 1\n")
                       for a in answers)
            assert endpoint.scrapes == 1
            await endpoint.request()  # within a second: the same result
            assert endpoint.scrapes == 1
            head = await endpoint.request(b"HEAD /metrics HTTP/1.1\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
            assert b"Content-Length" not in head and endpoint.scrapes == 1
            await asyncio.sleep(1.1)
            await endpoint.request()
            assert endpoint.scrapes == 2
            assert [name.startswith("vsl-metrics") for name in endpoint.threads] == [True]
    asyncio.run(main())


def test_connections_past_the_cap_are_closed_at_once():
    from vsl.server.metrics_http import MAX_CONNECTIONS

    async def main():
        async with Endpoint() as endpoint:
            held = [await asyncio.open_connection("127.0.0.1", endpoint.port)
                    for _ in range(MAX_CONNECTIONS)]
            await asyncio.sleep(0.2)
            start = time.monotonic()
            assert await endpoint.request() == b""
            assert time.monotonic() - start < 1
            for _, writer in held:
                writer.close()
            await asyncio.sleep(0.2)
            assert (await endpoint.request()).startswith(b"HTTP/1.1 200 ")
    asyncio.run(main())


def _reader_that_never_reads(port: int) -> socket.socket:
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    client.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
    return client


def test_a_client_that_never_reads_is_aborted_at_the_deadline(monkeypatch):
    from vsl.server import metrics_http

    monkeypatch.setattr(metrics_http, "HEAD_TIMEOUT", 0.5)
    monkeypatch.setattr(metrics_http, "WRITE_TIMEOUT", 0.5)

    async def main():
        async with Endpoint(body=b"x" * (8 * 1024 * 1024)) as endpoint:
            client = _reader_that_never_reads(endpoint.port)
            await asyncio.sleep(0.5)
            assert len(endpoint.http.open) == 1
            await asyncio.sleep(1.0)
            assert not endpoint.http.open
            client.close()
    asyncio.run(main())


def test_stop_aborts_a_client_that_never_reads():
    async def main():
        endpoint = Endpoint(body=b"x" * (8 * 1024 * 1024))
        async with endpoint:
            client = _reader_that_never_reads(endpoint.port)
            await asyncio.sleep(0.5)
            assert endpoint.http.open
            start = time.monotonic()
        assert time.monotonic() - start < 1
        assert not [task for task in asyncio.all_tasks()  # (3.12 waits for them in stop)
                    if "_handle" in repr(task.get_coro())]
        client.close()
    asyncio.run(main())


def test_a_failing_answer_is_a_500_logged_once_a_minute(caplog):
    def broken() -> bytes:
        raise ValueError("no files")

    async def main():
        async with Endpoint(make=broken) as endpoint:
            for _ in range(3):
                answer = await endpoint.request()
                assert answer.startswith(b"HTTP/1.1 500 ")
    asyncio.run(main())
    logged = [r for r in caplog.records if "answering a request failed" in r.getMessage()]
    assert len(logged) == 1 and "no files" in caplog.text


@pytest.mark.parametrize("accept", [
    "application/openmetrics-text; version=abc",
    "application/openmetrics-text; version=1.0.0\nX-Injected: 1",
    "application/openmetrics-text; version=",
    "text/plain; version=0.0.4x",
])
def test_a_hostile_accept_header_gets_the_text_format(accept):
    from vsl.server import metrics

    encoder, content_type = metrics.encoding(accept)
    assert content_type.startswith("text/plain; version=0.0.4")


def test_a_well_formed_accept_header_gets_openmetrics():
    from vsl.server import metrics

    _, content_type = metrics.encoding("application/openmetrics-text; version=1.0.0,"
                                       "text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0;")


def test_queue_labels_are_bounded_the_rest_summed_as_other():
    from vsl.server.queue_gauges import bounded

    counts = {"deliver": 1, "hold": 2, "quarantine/a": 3, "quarantine/b": 4, "BAD NAME": 5}
    oldest = {"hold": 20.0, "quarantine/b": 10.0, "BAD NAME": 5.0}
    assert bounded(counts, oldest, 10) == (
        {"deliver": 1, "hold": 2, "quarantine/a": 3, "quarantine/b": 4, "other": 5},
        {"hold": 20.0, "quarantine/b": 10.0, "other": 5.0})
    assert bounded(counts, oldest, 3) == ({"deliver": 1, "hold": 2, "other": 12},
                                          {"hold": 20.0, "other": 5.0})


def test_the_build_version_is_unknown_without_package_metadata(monkeypatch):
    from importlib import metadata

    from vsl.server import exporter

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    assert exporter.BuildInfo().version == "0.1.0"
    monkeypatch.setattr(exporter.metadata, "version", missing)
    info = exporter.BuildInfo()
    assert info.version == "unknown"
    assert info.collect()[0].samples[0].labels == {"version": "unknown"}
