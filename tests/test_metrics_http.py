"""The metrics endpoint of a real `vsl serve` (workers 1 and 2, --metrics-listen on a
loopback port): /metrics parses as Prometheus text and counts the spool's queues,
/healthz and /readyz answer (503 naming the spool when its tmp/ is gone), other paths and
methods are refused, a client that sends nothing is cut after 5 s; a metrics port in use
stops the start before any worker; a killed worker is restarted and no counter drops."""
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
from tests.support.crash import VSL, stop_process, write_config
from tests.support.mailsink import free_port, listening
from tests.support.smtp_tools import wait_for

_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


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
        return {int(i): int(pid) for i, pid in _STARTED.findall(self.log.read_text())}

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


def test_a_killed_worker_is_restarted_and_no_counter_drops(served):
    server = served(2)
    send_one(server.smtp_port)
    before = server.samples()
    first = server.workers()
    os.kill(first[1], signal.SIGKILL)
    assert wait_for(lambda: server.workers()[1] != first[1], timeout=10)
    assert wait_for(lambda: server.get("/readyz")[0] == 200, timeout=10)
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
