"""Client text in log lines and operator output: a terminal escape, a forged log line or a
byte that was not UTF-8 never passes through raw."""
from __future__ import annotations

import logging
import sys

from vsl.server.logsetup import configure
from vsl.server.observability_config import LogConfig
from vsl.server.printable import SafeFormatter, printable


def record(msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord("mail.log", logging.WARNING, __file__, 1, msg, args, None)


def test_a_log_line_escapes_controls_and_cannot_start_a_forged_line():
    line = SafeFormatter("%(levelname)s %(message)s").format(
        record("unrecognised: %s", "FOO\x1b]0;PWNED\x07\nJan 1 sshd: Failed password"))
    assert line == ("WARNING unrecognised: FOO\\x1b]0;PWNED\\x07\n"
                    "  Jan 1 sshd: Failed password")


def test_a_traceback_cannot_forge_a_line_either():
    try:
        raise ValueError("bad helo \x1b]0;pwn\x07\nNOQUEUE: reject: forged line")
    except ValueError:
        failure = record("internal error")
        failure.exc_info = sys.exc_info()
    text = SafeFormatter("%(message)s").format(failure)
    assert "\x1b" not in text and "\x07" not in text and "\\x1b]0;pwn\\x07" in text
    assert all(line.startswith("  ") for line in text.split("\n")[1:])


def test_bytes_that_were_not_utf8_are_escaped():
    helo = b"a\xff\x9b31mb".decode("utf-8", "surrogateescape")  # as the session keeps it
    assert printable(helo) == "a\\udcff\\udc9b31mb"


def test_vsl_serve_formats_every_log_line_safely(monkeypatch):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    configure(LogConfig())
    [handler] = logging.getLogger().handlers
    assert isinstance(handler.formatter, SafeFormatter)
