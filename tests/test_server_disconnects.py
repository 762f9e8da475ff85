"""Every connection ends, whatever the client does and under either event loop: the
server closes its side, calls connection_lost once, releases the admission slot and
logs the disconnect. (Under uvloop a client that closed at once used to hold its slot
for ever: the session task was cancelled before it ever ran, and nothing closed the
half-closed transport.)"""
from __future__ import annotations

import logging
import socket
import struct
from dataclasses import replace

import pytest

from vsl.server.config import SmtpLimits
from tests.support.servers import config_for, running
from tests.support.smtp_tools import Raw, normal_session, wait_for

PER_IP = 3


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_choice(request, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    monkeypatch.setenv("VSL_EVENT_LOOP", request.param)
    return request.param


def few_per_ip(tmp_path):
    return config_for(tmp_path, limits=replace(SmtpLimits(), connections_per_ip=PER_IP))


def all_ended(server, caplog, connections: int) -> bool:
    """Whether ``connections`` disconnects were logged and every admission slot came back
    within a few seconds."""
    return wait_for(lambda: caplog.text.count("disconnect from") >= connections
                    and not server.services.admission.per_ip, 5)


def close_at_once(port: int) -> None:
    socket.create_connection(("127.0.0.1", port)).close()


def reset_at_once(port: int) -> None:
    """Close with an RST instead of a FIN."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def close_after_the_greeting(port: int) -> None:
    Raw(port).close()


def close_mid_command(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"EHLO half-a-comm")


def half_close_before_the_greeting(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):  # the greeting, perhaps, then the close
            pass


@pytest.mark.parametrize("leave", [close_at_once, reset_at_once, close_after_the_greeting,
                                   close_mid_command, half_close_before_the_greeting])
def test_clients_that_leave_early_hold_no_slot(tmp_path, caplog, loop_choice, leave):
    with running(few_per_ip(tmp_path)) as server:
        for _ in range(PER_IP * 3):
            leave(server.port())
        assert all_ended(server, caplog, PER_IP * 3), server.services.admission.per_ip
        normal_session(server)


@pytest.mark.parametrize("commands, codes", [
    (b"EHLO half.test\r\nMAIL FROM:<alice@example.org>\r\nNOOP\r\n", [250, 250, 250]),
    (b"EHLO half.test\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.test>\r\n"
     b"DATA\r\nSubject: half\r\n\r\nbody\r\n.\r\nQUIT\r\n", [250, 250, 250, 354, 250, 221]),
])
def test_a_half_closed_client_gets_its_replies_then_the_close(tmp_path, caplog, loop_choice,
                                                               commands, codes):
    with running(few_per_ip(tmp_path)) as server:
        raw = Raw(server)
        raw.send(commands)
        raw.sock.shutdown(socket.SHUT_WR)
        assert [raw.reply()[0] for _ in codes] == codes
        assert raw.closed(3)
        raw.close()
        assert all_ended(server, caplog, 1), server.services.admission.per_ip
        normal_session(server)
