"""Reloading the policy: Policy.reload() (what SIGHUP calls), the file watcher, a
broken script keeping the old one, and SIGHUP to a real ``vsl serve`` process."""
from __future__ import annotations

import concurrent.futures
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.crash import VslProcess, stop_process, write_config
from tests.support.mailsink import free_port
from tests.support.servers import config_for, running
from tests.support.smtp_tools import client, wait_for

VSL = Path(sys.executable).with_name("vsl")


def policy(version: str, refused: str) -> str:
    return f"""
fn on_rcpt_to(ctx) {{
    if ctx.rcpt.local_part == "{refused}" {{
        return status::deny("550 5.7.1 refused by {version}");
    }}
    status::next()
}}
"""


def verdict(port: int, rcpt: str) -> tuple[int, bytes]:
    """The reply to RCPT TO:<rcpt> in a new session."""
    import smtplib
    with smtplib.SMTP("127.0.0.1", port, local_hostname="c.test", timeout=5) as smtp:
        smtp.ehlo()
        assert smtp.mail("alice@example.org")[0] == 250
        return smtp.rcpt(rcpt)


def reload_in_loop(server) -> bool:
    """Call server.policy.reload() on the server's event loop, as the SIGHUP handler does."""
    result: concurrent.futures.Future = concurrent.futures.Future()

    def call():
        try:
            result.set_result(server.policy.reload())
        except BaseException as err:  # noqa: BLE001 - handed to the test
            result.set_exception(err)
    server.loop.call_soon_threadsafe(call)
    return result.result(10)


def write(path: Path, text: str) -> None:
    """Write a script so that the watcher's stamp (mtime, size) surely changes."""
    old = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    stat = path.stat()
    if stat.st_mtime_ns <= old:
        os.utime(path, ns=(stat.st_atime_ns, old + 1_000_000))


def test_reload_swaps_in_a_changed_main(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with running(config_for(tmp_path, policy("v1", "a"))) as server:
        port = server.port()
        assert verdict(port, "a@example.test") == (550, b"5.7.1 refused by v1")
        assert verdict(port, "b@example.test")[0] == 250
        generation = server.policy.generation
        with client(server) as open_session:  # a session opened before the reload
            open_session.ehlo()
            write(server.config.scripts / "main.vsl", policy("v2", "b"))
            assert reload_in_loop(server) is True
            assert server.policy.generation > generation
            assert verdict(port, "a@example.test")[0] == 250
            assert verdict(port, "b@example.test") == (550, b"5.7.1 refused by v2")
            assert open_session.mail("alice@example.org")[0] == 250  # still served
    assert "scripts reloaded" in caplog.text


def test_reload_picks_up_a_changed_module(tmp_path):
    main = 'import "lists" as lists;\n' \
           'fn on_rcpt_to(ctx) { if ctx.rcpt.local_part in lists::BLOCKED ' \
           '{ return status::deny("550 5.7.1 listed"); } status::next() }'
    with _with_module(tmp_path, main, 'const BLOCKED = ["a"];') as server:
        port = server.port()
        assert verdict(port, "a@example.test")[0] == 550
        write(server.config.scripts / "lists.vsl", 'const BLOCKED = ["b", "c"];')
        assert reload_in_loop(server)
        assert verdict(port, "a@example.test")[0] == 250
        assert verdict(port, "c@example.test")[0] == 550


def _with_module(tmp_path, main: str, module: str):
    config = config_for(tmp_path, main)
    (config.scripts / "lists.vsl").write_text(module)
    return running(config)


BROKEN = {
    "syntax": ("fn on_rcpt_to(ctx) { status::deny( }", "main.vsl:1:"),
    "unknown-function": ("fn on_rcpt_to(ctx) { status::refuse() }", "refuse"),
    "stage-arity": ("fn on_rcpt_to(ctx, extra) { status::next() }", "on_rcpt_to"),
    "unknown-stage": ("fn on_rcpt(ctx) { status::deny() }", "did you mean 'on_rcpt_to'?"),
    "stage-availability": ("fn on_rcpt_to(ctx) { ctx.get_header(\"X\"); status::next() }",
                           "ctx.get_header() is not available in on_rcpt_to"),
}


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_reload_with_a_broken_script_keeps_the_running_one(tmp_path, caplog, broken):
    text, logged = BROKEN[broken]
    with running(config_for(tmp_path, policy("v1", "a"))) as server:
        port = server.port()
        old = server.policy.script
        write(server.config.scripts / "main.vsl", text)
        assert reload_in_loop(server) is False
        assert server.policy.script is old
        assert verdict(port, "a@example.test") == (550, b"5.7.1 refused by v1")
        assert "reload failed" in caplog.text and logged in caplog.text, caplog.text
        # fixed again: the next reload takes it
        write(server.config.scripts / "main.vsl", policy("v3", "c"))
        assert reload_in_loop(server) is True
        assert verdict(port, "a@example.test")[0] == 250
        assert verdict(port, "c@example.test")[0] == 550


def test_reload_without_main_keeps_the_running_script(tmp_path, caplog):
    config = config_for(tmp_path, policy("v1", "a"))
    (config.scripts / "lists.vsl").write_text("const X = 1;")
    with running(config) as server:
        (config.scripts / "main.vsl").unlink()
        assert reload_in_loop(server) is False
        assert verdict(server.port(), "a@example.test")[0] == 550
    assert "no main.vsl" in caplog.text


def test_the_watcher_reloads_a_changed_script_by_itself(tmp_path, caplog):
    with running(config_for(tmp_path, policy("v1", "a"))) as server:
        port = server.port()
        assert verdict(port, "a@example.test")[0] == 550
        write(server.config.scripts / "main.vsl", policy("v2", "b"))
        assert wait_for(lambda: verdict(port, "b@example.test")[0] == 550, 3.5, 0.2), \
            "the change was not picked up within 3.5 s"
        assert verdict(port, "a@example.test")[0] == 250


def test_the_watcher_keeps_the_old_script_on_a_broken_change(tmp_path, caplog):
    with running(config_for(tmp_path, policy("v1", "a"))) as server:
        port = server.port()
        write(server.config.scripts / "main.vsl", "fn on_rcpt_to(ctx) { oops( }")
        assert wait_for(lambda: "reload failed" in caplog.text, 3.5, 0.1)
        time.sleep(1.5)  # the watcher does not retry the same broken files every second
        assert caplog.text.count("reload failed") == 1
        assert verdict(port, "a@example.test") == (550, b"5.7.1 refused by v1")


def test_sighup_reloads_a_running_vsl_serve(tmp_path):
    if not VSL.exists():
        pytest.skip("the vsl command is not installed in this environment")
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    main = scripts / "main.vsl"
    v1, v2 = policy("v1", "a"), policy("v2", "b")
    assert len(v1) == len(v2)
    main.write_text(v1)
    stamp = main.stat()
    proc = subprocess.Popen(  # vsl serve refuses port 0
        [str(VSL), "serve", "--scripts", str(scripts), "--listen", f"127.0.0.1:{free_port()}",
         "--queue-dir", str(tmp_path / "queue"), "--hostname", "example.test"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        port = int(match.group(1))
        assert verdict(port, "a@example.test")[0] == 550
        # same size and mtime: only SIGHUP, not the watcher, can notice the change
        main.write_text(v2)
        os.utime(main, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        time.sleep(1.2)
        assert verdict(port, "a@example.test")[0] == 550
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: verdict(port, "a@example.test")[0] == 250, 3, 0.1)
        # every worker (one per CPU) reloads on its own: b may meet one that has not yet
        assert wait_for(lambda: verdict(port, "b@example.test") ==
                        (550, b"5.7.1 refused by v2"), 3, 0.1)
        assert proc.poll() is None  # SIGHUP did not stop the server
    finally:
        stop_process(proc)
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_warns_that_a_changed_config_file_needs_a_restart(tmp_path, workers):
    """SIGHUP reloads the scripts, not vsl.toml (listeners, workers and queue cannot change
    under a running server): when the file changed, a warning says to restart, once."""
    port = free_port()
    config = write_config(tmp_path, port, "mx.reload.test", "", workers=workers)
    vsl = VslProcess(config, port, tmp_path)
    vsl.start()
    try:
        warning = f"{config} changed since vsl serve started: SIGHUP reloads the scripts only"
        assert wait_for(lambda: vsl.log.read_text().count(" started: ") == workers, 10)
        vsl.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: vsl.log.read_text().count("scripts reloaded") == workers, 10)
        assert warning not in vsl.log.read_text()
        config.write_text(config.read_text().replace("[limits]", "[limits]\nerrors = 3"))
        vsl.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: vsl.log.read_text().count("scripts reloaded") == 2 * workers, 10)
        assert vsl.log.read_text().count(warning) == 1
    finally:
        vsl.stop()
