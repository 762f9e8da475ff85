"""[server] workers = 2: a real `vsl serve` parent and its two worker processes on one
loopback port. Concurrent clients get every message into the spool exactly once, served by
both workers; a killed worker is replaced; SIGHUP reloads the scripts in every worker;
SIGTERM stops them all and the parent exits 0."""
from __future__ import annotations

import os
import re
import signal
import smtplib

from tests.support.crash import Clients, VslProcess, spool_message_ids, write_config
from tests.support.mailsink import free_port
from tests.support.smtp_tools import wait_for
from tests.support.workers import worker_pids

_QUEUED = re.compile(r"vsl\.smtp\[(\d+)\]: \S+: queued ")
_RELOADED = re.compile(r"vsl\.policy\[(\d+)\]: scripts reloaded")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def rcpt_reply(port: int) -> int:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=5) as smtp:
        smtp.ehlo()
        smtp.mail("sender@clients.test")
        return smtp.rcpt("rcpt@remote.test")[0]


def test_two_workers_share_the_listener(tmp_path):
    port = free_port()
    config = write_config(tmp_path, port, "mx.workers.test", "[delivery]\nenabled = false\n",
                          workers=2)
    vsl = VslProcess(config, port, tmp_path)
    vsl.start()
    try:
        assert wait_for(lambda: len(worker_pids(vsl)) == 2, timeout=10)
        first = worker_pids(vsl)
        assert first[0] != first[1] and all(alive(pid) for pid in first.values())

        clients = Clients(port, target=100, threads=6, tag="workers").start()
        assert clients.join(30), "the clients did not finish"
        assert clients.outcomes == {}, clients.outcomes  # every message got its 250
        assert clients.acked_count >= 100 and set(clients.attempted) == set(clients.acked)
        held = [mid for ids in spool_message_ids(tmp_path / "queue").values() for mid in ids]
        assert sorted(held) == sorted(clients.acked)  # each exactly once
        served = {int(pid) for pid in _QUEUED.findall(vsl.log.read_text())}
        assert served == set(first.values()), (served, first)

        # a worker that dies is started again; the other one serves meanwhile
        os.kill(first[1], signal.SIGKILL)
        assert wait_for(lambda: worker_pids(vsl)[1] != first[1], timeout=5)
        now = worker_pids(vsl)
        assert now[0] == first[0] and alive(now[1])

        # SIGHUP: every worker reloads (the deny is what they all answer then)
        (tmp_path / "scripts" / "main.vsl").write_text(
            'fn on_rcpt_to(ctx) { status::deny("550 5.7.1 closed") }\n')
        mark = len(vsl.log.read_text())
        vsl.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: {int(p) for p in _RELOADED.findall(vsl.log.read_text()[mark:])}
                 == set(now.values()), timeout=5)
        assert "SIGHUP: reloading the scripts in 2 worker(s)" in vsl.log.read_text()[mark:]
        assert [rcpt_reply(port) for _ in range(6)] == [550] * 6

        # SIGTERM stops every worker, and the parent exits 0
        vsl.proc.send_signal(signal.SIGTERM)
        assert vsl.proc.wait(10) == 0
        assert not any(alive(pid) for pid in {*first.values(), *now.values()})
    finally:
        vsl.stop()


def test_workers_flag_must_be_at_least_one():
    import subprocess

    from tests.support.crash import VSL
    result = subprocess.run([VSL, "serve", "--workers", "0"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2 and "--workers" in result.stderr
