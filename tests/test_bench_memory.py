"""bench/connections.py and bench/soak.py: their client addresses and verdicts, and a
tiny run of each against a real `vsl serve` (a smoke test: no timing is checked)."""
from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import connections  # noqa: E402 - bench/ is on the path now
import soak  # noqa: E402


def test_idle_connections_come_from_addresses_within_the_per_ip_limit():
    addresses = [connections.source_address(i) for i in range(5000)]
    per_address = {a: addresses.count(a) for a in set(addresses[:200])}
    assert set(per_address.values()) == {connections.PER_IP}
    assert len(set(addresses)) == 5000 // connections.PER_IP
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("127.1.0.0/16")
               for a in addresses)


def test_every_soak_message_comes_from_a_new_loopback_host_address():
    addresses = [soak.source_address(i) for i in range(100_000)]
    assert len(set(addresses)) == len(addresses)
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("127.0.0.0/8")
               and a.rsplit(".", 1)[1] not in ("0", "255") for a in addresses)


def sample(messages: int, rss: float, fds: int = 20, threads: int = 10) -> soak.Sample:
    return soak.Sample(messages, 0.0, rss, fds, threads, 0.0)


def test_soak_verdict_names_what_grew_past_its_bound():
    args = type("Args", (), {"max_growth": 8.0, "messages": 100})()
    samples = [sample(0, 60), sample(20, 65), sample(35, 69), sample(50, 70, threads=12),
               sample(100, 71)]
    assert soak.verdict(samples, samples[3], samples[4], args) == []
    grown = sample(100, 80, fds=25, threads=13)
    assert soak.verdict(samples, samples[3], grown, args) == [
        "RSS grew 10.0 MiB after the warm-up (bound 8.0 MiB)",
        "open descriptors 20 -> 25", "threads 12 (first half at most) -> 13"]
    # a run too short for its pools to fill: threads are not judged
    assert soak.verdict(samples[3:], samples[3], grown, args)[-1] == "open descriptors 20 -> 25"


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=BENCH, capture_output=True,
                          text=True, timeout=300)


def test_connections_bench_holds_connections_and_reports():
    done = run_bench("connections.py", "--connections", "30", "--rounds", "1",
                     "--fresh", "1", "--servers", "vsl,sink")
    assert done.returncode == 0, done.stderr
    assert "vSL / aiosmtpd sink: RSS per connection" in done.stdout


def test_soak_bench_delivers_every_message_and_judges_growth():
    done = run_bench("soak.py", "--messages", "40", "--warmup", "20", "--sample-every",
                     "20", "--max-growth", "50")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "growth after the warm-up" in done.stdout
