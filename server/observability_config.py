"""``[metrics]`` and ``[log]`` in vsl.toml: what the server measures and how it logs.

``server/config.py`` reads the sections through the schemas here; the checks that need
more than one key (a script metric's labels, the syslog target) are here too, so the
observability keys live in one place (docs/observability.md).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .metrics_catalogue import CATALOGUE, exposed_names

LOG_FORMATS = ("text", "json")
SYSLOG_FACILITIES = {"kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4,
                     "syslog": 5, "lpr": 6, "news": 7, "uucp": 8, "cron": 9,
                     "authpriv": 10, "ftp": 11,
                     **{f"local{i}": 16 + i for i in range(8)}}
METRIC_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")
LABEL_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
# label names a script metric may not declare, and why (the config error says it)
RESERVED_LABELS = {
    "le": "Prometheus's histogram bucket label", "quantile": "Prometheus's summary label",
    "instance": "a label Prometheus adds to every target",
    "job": "a label Prometheus adds to every target",
    "name": "an argument of the server's counting call",
    "amount": "an argument of the server's counting call",
    "self": "an argument of the server's counting call",
}
MAX_LABELS = 8           # label keys a script metric may declare
MAX_LABEL_VALUES = 64    # values a label may take
MAX_LABEL_VALUE_LEN = 64
SD_NAME = re.compile(r"[!#-<>-\\^-~]{1,32}")  # RFC 5424 SD-NAME: printable, no = ] " space
SYSLOG_UDP_MAX = 65000


class ObservabilityError(ValueError):
    """A problem of ``[metrics]`` or ``[log]``, naming the key (config.py turns it into a
    ConfigError)."""


@dataclass(frozen=True)
class ScriptMetric:
    """A counter a script may move with ``metrics::inc(name, labels)``: exported as
    ``vsl_script_<name>_total`` with exactly these label keys, each limited to its
    declared values (bounded cardinality)."""

    name: str
    help: str
    labels: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (key, allowed values), in order

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(key for key, _ in self.labels)

    @property
    def exported_name(self) -> str:
        return f"vsl_script_{self.name}_total"


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus endpoint (docs/observability.md)."""

    listen: str = ""           # "": no endpoint; "host:port" serves /metrics, /healthz,
                               # /readyz (`vsl serve --metrics-listen` overrides it)
    dir: Path | None = None    # prometheus_client's multiprocess files; None: a private
                               # temporary directory removed at stop; given: its *.db
                               # files are removed at start
    queue_gauges: bool = True  # count the queues at each scrape (off for huge spools)
    max_series: int = 1000     # label sets a metric may hold in each process; more are
                               # counted with each label's fallback ("other")
    script: tuple[ScriptMetric, ...] = ()  # [metrics.script.NAME] tables

    @property
    def enabled(self) -> bool:
        return bool(self.listen)

    def script_metric(self, name: str) -> ScriptMetric | None:
        return next((m for m in self.script if m.name == name), None)


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: the format of the server's log lines and where they go."""

    format: str = "text"        # "text" (Postfix-like lines) or "json" (one object a line)
    stderr: bool = True         # write lines to standard error
    syslog: str = ""            # "": none; "udp://host:port" or "unix:/dev/log" (RFC 5424)
    syslog_facility: str = "mail"
    syslog_app_name: str = "vsl"
    syslog_sd_id: str = "vsl@32473"  # the SD-ID of the server's structured data
                                     # (32473: the example enterprise number, RFC 5612)
    syslog_max_bytes: int = 2048     # longest datagram; a longer message is cut

    def syslog_target(self) -> tuple[str, str | tuple[str, int]] | None:
        """("udp", (host, port)) or ("unix", path) from ``syslog``, None when off."""
        return parse_syslog_target(self.syslog) if self.syslog else None


METRICS_SCHEMA = {"listen": str, "dir": "path", "queue_gauges": bool, "max_series": "int",
                  "script": "script_metrics"}
LOG_SCHEMA = {"format": str, "stderr": bool, "syslog": str, "syslog_facility": str,
              "syslog_app_name": str, "syslog_sd_id": str, "syslog_max_bytes": "int"}
MINIMUM = {"metrics.max_series": 10, "log.syslog_max_bytes": 480}


def parse_syslog_target(text: str) -> tuple[str, str | tuple[str, int]]:
    """"udp://host:port" -> ("udp", (host, port)); "unix:/path" -> ("unix", "/path")."""
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path.startswith("/"):
            raise ObservabilityError(f"log.syslog: '{text}': a unix socket needs an "
                                     "absolute path, e.g. unix:/dev/log")
        return "unix", path
    if text.startswith("udp://"):
        host, sep, port = text[len("udp://"):].rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if sep and host and port.isascii() and port.isdigit() and 0 < int(port) < 65536:
            return "udp", (host, int(port))
    raise ObservabilityError(f"log.syslog: '{text}' is not udp://host:port or "
                             "unix:/path (e.g. udp://127.0.0.1:514, unix:/dev/log)")


def script_metrics(value, key: str) -> tuple[ScriptMetric, ...]:
    """The ``[metrics.script.NAME]`` tables: ``help`` and ``labels = { key = [values] }``."""
    if not isinstance(value, dict):
        raise ObservabilityError(f"{key}: must be a table of [{key}.NAME] tables")
    declared = tuple(_script_metric(name, table, f"{key}.{name}")
                     for name, table in value.items())
    _refuse_clashes(declared, key)
    return declared


def _refuse_clashes(declared: tuple[ScriptMetric, ...], key: str) -> None:
    """An error for a script metric whose family or sample names in a scrape are also
    those of a catalogue metric or of another script metric (one would hide the other)."""
    taken = {exposed: f"the server's {name}" for name, metric in CATALOGUE.items()
             for exposed in exposed_names(name, metric.kind)}
    for metric in declared:
        exposed = exposed_names(metric.exported_name, "counter")
        clash = next((taken[name] for name in sorted(exposed) if name in taken), None)
        if clash:
            raise ObservabilityError(
                f"{key}.{metric.name}: exported as {metric.exported_name}, which clashes "
                f"with {clash} in a scrape: choose another name")
        taken.update((name, f"[{key}.{metric.name}]") for name in exposed)


def _script_metric(name: str, table, key: str) -> ScriptMetric:
    if not METRIC_NAME.fullmatch(name):
        raise ObservabilityError(f"{key}: a metric's name is 1 to 48 lowercase letters, "
                                 "digits and '_', starting with a letter")
    if not isinstance(table, dict):
        raise ObservabilityError(f"{key}: must be a table with help and labels")
    unknown = sorted(set(table) - {"help", "labels"})
    if unknown:
        raise ObservabilityError(f"{key}.{unknown[0]}: unknown key (known: help, labels)")
    help_text = table.get("help", f"script metric {name}")
    if not isinstance(help_text, str) or not help_text.strip():
        raise ObservabilityError(f"{key}.help: must be a non-empty string")
    return ScriptMetric(name, help_text.strip(), _labels(table.get("labels", {}),
                                                         f"{key}.labels"))


def _labels(value, key: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(value, dict):
        raise ObservabilityError(f"{key}: must be a table of label = [values], e.g. "
                                 "{ reason = [\"rbl\", \"content\"] }")
    if len(value) > MAX_LABELS:
        raise ObservabilityError(f"{key}: at most {MAX_LABELS} labels, not {len(value)}")
    return tuple((label, _label_values(values, f"{key}.{label}"))
                 for label, values in value.items() if _label_name(label, key))


def _label_name(label: str, key: str) -> bool:
    if not LABEL_NAME.fullmatch(label):
        raise ObservabilityError(f"{key}.{label}: a label is 1 to 32 lowercase letters, "
                                 "digits and '_', starting with a letter")
    if label in RESERVED_LABELS:
        raise ObservabilityError(f"{key}.{label}: '{label}' is reserved "
                                 f"({RESERVED_LABELS[label]}): choose another label name "
                                 f"(reserved: {', '.join(RESERVED_LABELS)})")
    return True


def _label_values(values, key: str) -> tuple[str, ...]:
    """A label's allowed values: 1 to MAX_LABEL_VALUES distinct short strings (a value
    outside them is counted as "other", so "other" needs no declaring)."""
    if not isinstance(values, list) or not values:
        raise ObservabilityError(f"{key}: must be a non-empty array of the label's values "
                                 "(labels are bounded: no addresses or IPs)")
    if len(values) > MAX_LABEL_VALUES:
        raise ObservabilityError(f"{key}: at most {MAX_LABEL_VALUES} values, "
                                 f"not {len(values)}")
    for item in values:
        if not isinstance(item, str) or not 0 < len(item) <= MAX_LABEL_VALUE_LEN:
            raise ObservabilityError(f"{key}: values are strings of 1 to "
                                     f"{MAX_LABEL_VALUE_LEN} characters, not {item!r}")
    if len(set(values)) != len(values):
        raise ObservabilityError(f"{key}: a value is listed twice")
    return tuple(values)


def problems(metrics: MetricsConfig, log: LogConfig) -> list[str]:
    """Messages for values of the two sections that are wrong on their own."""
    out = []
    if log.format not in LOG_FORMATS:
        out.append(f"log.format: must be one of {', '.join(LOG_FORMATS)}, "
                   f"not {log.format!r}")
    if log.syslog_facility not in SYSLOG_FACILITIES:
        out.append(f"log.syslog_facility: unknown facility '{log.syslog_facility}' "
                   f"(one of {', '.join(SYSLOG_FACILITIES)})")
    if not re.fullmatch(r"[!-~]{1,48}", log.syslog_app_name):
        out.append("log.syslog_app_name: 1 to 48 printable ASCII characters, no space")
    name, at, number = log.syslog_sd_id.partition("@")
    if not (SD_NAME.fullmatch(log.syslog_sd_id) and at and name and number.isdigit()):
        out.append(f"log.syslog_sd_id: '{log.syslog_sd_id}' is not NAME@NUMBER (a private "
                   "SD-ID of RFC 5424, e.g. vsl@32473)")
    if log.syslog_max_bytes > SYSLOG_UDP_MAX:
        out.append(f"log.syslog_max_bytes: must be at most {SYSLOG_UDP_MAX}")
    if not log.stderr and not log.syslog:
        out.append("log.stderr: false needs log.syslog, or the server logs nowhere")
    if log.syslog:
        try:
            parse_syslog_target(log.syslog)
        except ObservabilityError as err:
            out.append(str(err))
    return out
