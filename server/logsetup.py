"""Where `vsl serve`'s log lines go, and in which format (``[log]`` in vsl.toml):
standard error in ``log.format`` (text or json) when ``log.stderr``, and RFC 5424
datagrams to ``log.syslog`` when set. Every handler stamps its records with the
session's ids and marks a script's ``log()`` lines as the event ``script_log``.

    configure(config.log, verbose)    # at start, before the server runs
"""
from __future__ import annotations

import logging

from .logformat import JsonFormatter, TextFormatter
from .logids import IdsFilter
from .observability_config import LogConfig
from .syslog5424 import Syslog5424Handler, split_sd

SCRIPT_LOGGERS = "vsl.script."  # stdlib's log() native: vsl.script.<topic>


class ScriptLines(logging.Filter):
    """A script's ``log()`` line is the event ``script_log``; the RFC 5424 SD elements
    its text begins with (when valid, and not claiming the server's own SD-ID
    ``own_sd_id``) become its structured data."""

    def __init__(self, own_sd_id: str):
        super().__init__()
        self.own_sd_id = own_sd_id

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(SCRIPT_LOGGERS) and not hasattr(record, "vsl_event"):
            record.vsl_event = "script_log"
            sd, rest = split_sd(record.getMessage(), (self.own_sd_id,))
            if sd:
                record.vsl_sd, record.vsl_sd_rest = sd, rest
        return True


def configure(log: LogConfig, verbose: int = 0, *quiet: str) -> None:
    """Replace the handlers a previous call installed with those ``log`` asks for; debug
    level when ``verbose``; the loggers ``quiet`` (and asyncio) from warnings on."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    _skip_unused_record_attributes()
    for handler in [h for h in root.handlers if getattr(h, "vsl_configured", False)]:
        root.removeHandler(handler)
        handler.close()
    for handler in handlers(log):
        handler.vsl_configured = True
        handler.addFilter(IdsFilter())
        handler.addFilter(ScriptLines(log.syslog_sd_id))
        root.addHandler(handler)
    for noisy in ("asyncio", *quiet):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _skip_unused_record_attributes() -> None:
    """No line of the server shows the caller's file and line, the thread or the
    multiprocessing process name, so records do not look them up (the logging HOWTO's
    "Optimization": a third of a record's cost, a few µs per line)."""
    logging._srcfile = None  # noqa: SLF001 - the documented switch
    logging.logThreads = False
    logging.logMultiprocessing = False


def handlers(log: LogConfig) -> list[logging.Handler]:
    """The handlers of ``[log]``: stderr in its format, syslog."""
    out = []
    if log.stderr:
        stderr = logging.StreamHandler()
        stderr.setFormatter(JsonFormatter() if log.format == "json" else TextFormatter())
        out.append(stderr)
    if log.syslog:
        out.append(Syslog5424Handler(log))
    return out
