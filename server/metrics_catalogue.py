"""Every metric the server exports: its name, help, labels and what each label may hold.

This is the single list (docs/observability.md): ``server/metrics.py`` refuses a name
that is not here, and turns a label value outside its set or pattern into the label's
fallback ("other", or "none" for an absent enhanced code). Labels are bounded by design:
never addresses, IPs, host names or ids. Counters end in ``_total``; a metric marked
``exporter`` is computed at scrape time by the exporter (queue gauges, build info) and
is never counted by a serving process.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

STAGES = ("connect", "helo", "auth", "mail", "rcpt", "data")
SCRIPT_STAGES = ("connect", "helo", "auth", "mail_from", "rcpt_to", "pre_queue",
                 "post_queue", "delivery_failure")
ROUTES = ("smtp", "lmtp", "maildir", "relay")
QUEUE_NAMES = ("working", "deliver", "deferred", "dead", "hold", "quarantine")
CHECK_RESULTS = {
    "spf": ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"),
    "iprev": ("pass", "fail", "temperror", "permerror"),
    "dkim": ("pass", "fail", "neutral", "none", "policy", "temperror", "permerror"),
    "dmarc": ("pass", "fail", "none", "temperror", "permerror"),
    "arc": ("pass", "fail", "none"),
    "dnsbl": ("listed", "not_listed", "temperror"),
}
BYTES_BUCKETS = tuple(1024 * 4 ** n for n in range(9))  # 1 KiB .. 64 MiB
SCRIPT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                  2.5, 5.0)
DNS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DELIVERY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                    300.0)
_TOKEN = re.compile(r"[a-z0-9_.-]{1,32}")


# what a scrape shows of a metric of each kind: its family's name plus these suffixes
_SAMPLE_SUFFIXES = {"counter": ("_total", "_created"), "gauge": (),
                    "histogram": ("_bucket", "_sum", "_count", "_created")}


def exposed_names(name: str, kind: str) -> set[str]:
    """The family and sample names a scrape shows for the metric ``name`` of ``kind``
    (a counter's family drops its ``_total``)."""
    family = name.removesuffix("_total") if kind == "counter" else name
    return {family, *(family + suffix for suffix in _SAMPLE_SUFFIXES[kind])}


@dataclass(frozen=True)
class Label:
    """A label and the values it may hold: ``values`` (a set), else ``pattern`` (a whole
    match), else ``by``: the set depends on another label's value (``(label, {value:
    values})``). Anything else is recorded as ``fallback``."""

    name: str
    values: tuple[str, ...] = ()
    pattern: re.Pattern | None = None
    by: tuple[str, dict[str, tuple[str, ...]]] | None = None
    fallback: str = "other"

    def guard(self, value: str, labels: dict[str, str]) -> str:
        """``value`` if this label may hold it (given the other ``labels``), else the
        fallback."""
        value = str(value)
        if self.by is not None:
            allowed = self.by[1].get(labels.get(self.by[0], ""), ())
            return value if value in allowed else self.fallback
        if self.pattern is not None:
            return value if self.pattern.fullmatch(value) else self.fallback
        return value if value in self.values else self.fallback


@dataclass(frozen=True)
class Metric:
    """One metric: ``kind`` counter, gauge (``mode``: prometheus_client's multiprocess
    mode) or histogram (``buckets``)."""

    name: str
    kind: str
    help: str
    labels: tuple[Label, ...] = ()
    buckets: tuple[float, ...] = ()
    mode: str = "livesum"
    exporter: bool = False

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)


def _counter(name, help_text, *labels):
    return Metric(name, "counter", help_text, labels)


def _histogram(name, help_text, buckets, *labels):
    return Metric(name, "histogram", help_text, labels, buckets)


def _one_of(name, *values):
    return Label(name, values)


_STAGE = _one_of("stage", *STAGES)
_SCRIPT_STAGE = _one_of("stage", *SCRIPT_STAGES)
_ROUTE = _one_of("route", *ROUTES)
_QUEUE = Label("queue", pattern=re.compile(r"[a-z]{1,16}(/[A-Za-z0-9_.-]{1,64})?"))

CATALOGUE: dict[str, Metric] = {m.name: m for m in (
    # connections
    _counter("vsl_connections_opened_total", "connections accepted, by listener kind",
             _one_of("listener", "smtp", "submission", "smtps")),
    _counter("vsl_connections_refused_total", "connections refused before the greeting",
             _one_of("reason", "limit_total", "limit_per_ip", "on_connect")),
    Metric("vsl_connections_current", "gauge", "connections open now"),
    # SMTP
    _counter("vsl_smtp_replies_total", "replies sent, by stage and code", _STAGE,
             Label("code", pattern=re.compile(r"[2-5]\d\d")),
             Label("enhanced", pattern=re.compile(r"[245]\.\d{1,3}\.\d{1,3}"),
                   fallback="none")),
    _counter("vsl_smtp_rejects_total", "commands refused, by stage and who decided",
             _STAGE, _one_of("decider", "server", "script", "fallback")),
    _counter("vsl_tls_sessions_total", "TLS sessions established, by protocol version",
             _one_of("version", "TLSv1.2", "TLSv1.3")),
    _counter("vsl_tls_failures_total", "TLS handshakes that failed"),
    _counter("vsl_auth_total", "AUTH attempts, by mechanism and result",
             _one_of("mechanism", "PLAIN", "LOGIN"),
             _one_of("result", "success", "failure", "locked")),
    # messages
    _counter("vsl_messages_received_total", "messages received to the final dot"),
    _counter("vsl_messages_queued_total", "messages queued, by queue",
             _one_of("queue", "working", "deliver", "quarantine", "hold")),
    _histogram("vsl_message_size_bytes", "size of the messages received", BYTES_BUCKETS),
    _counter("vsl_messages_not_queued_total", "messages that could not be queued",
             _one_of("reason", "disk_full", "error")),
    # scripts
    _histogram("vsl_script_seconds", "time a stage function of the scripts took",
               SCRIPT_BUCKETS, _SCRIPT_STAGE),
    _counter("vsl_script_errors_total", "stage functions that failed",
             _SCRIPT_STAGE, _one_of("kind", "error", "wrong_return")),
    _counter("vsl_script_reloads_total", "reloads of the scripts, by result",
             _one_of("result", "ok", "failed")),
    _counter("vsl_check_results_total", "results of the checks of the natives",
             _one_of("check", *CHECK_RESULTS), Label("result", by=("check", CHECK_RESULTS))),
    # DNS
    _counter("vsl_dns_queries_total", "DNS queries sent, by type and result",
             _one_of("rdtype", "A", "AAAA", "MX", "TXT", "PTR"),
             _one_of("result", "ok", "nxdomain", "nodata", "servfail", "timeout", "error")),
    _counter("vsl_dns_cache_total", "DNS look-ups answered from the cache or not",
             _one_of("result", "hit", "miss")),
    _histogram("vsl_dns_seconds", "time a DNS query took", DNS_BUCKETS),
    # queue (computed at scrape time)
    Metric("vsl_queue_messages", "gauge", "messages waiting, by queue", (_QUEUE,),
           exporter=True),
    Metric("vsl_queue_oldest_age_seconds", "gauge",
           "age of the oldest message of a queue (the spool only)", (_QUEUE,),
           exporter=True),
    # delivery
    _counter("vsl_delivery_attempts_total", "delivery attempts per recipient",
             _ROUTE, _one_of("result", "delivered", "deferred", "failed")),
    _counter("vsl_delivery_failures_total", "delivery failures, by route and class",
             _ROUTE, Label("class", pattern=_TOKEN)),
    _histogram("vsl_delivery_seconds", "time a delivery attempt took", DELIVERY_BUCKETS,
               _ROUTE),
    _counter("vsl_delivery_retries_total", "deferred messages tried again"),
    _counter("vsl_delivery_postponed_total",
             "messages put back untried: a destination had no free session"),
    _counter("vsl_bounce_self_learned_total",
             "examples the bounce classifier kept by self-learning, by reason",
             Label("reason", pattern=_TOKEN)),
    _counter("vsl_dsn_sent_total", "delivery status notifications sent",
             _one_of("kind", "failure", "delay")),
    _counter("vsl_messages_dead_total", "messages moved to the dead queue"),
    # processes
    _counter("vsl_worker_restarts_total", "workers started again after they died"),
    _counter("vsl_log_dropped_total", "log lines dropped (syslog could not take them)"),
    Metric("vsl_build_info", "gauge", "the running version", (Label("version",
           pattern=re.compile(r"[0-9A-Za-z.+-]{1,32}")),), exporter=True),
)}
