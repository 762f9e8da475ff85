"""[metrics] and [log] in vsl.toml: defaults, script metric declarations, bad values."""
from pathlib import Path

import pytest

from vsl.server.config import ConfigError, from_dict, load


def test_defaults_are_off_and_text():
    config = from_dict({})
    assert not config.metrics.enabled and config.metrics.script == ()
    assert config.log.format == "text" and config.log.stderr and config.log.syslog_target() is None


def test_script_metric_declared(tmp_path: Path):
    (tmp_path / "vsl.toml").write_text(
        '[metrics]\nlisten = "127.0.0.1:9187"\n'
        '[metrics.script.spam_hit]\nhelp = "spam"\nlabels = { reason = ["rbl", "content"] }\n'
        '[log]\nformat = "json"\nsyslog = "udp://[::1]:514"\n')
    config = load(tmp_path / "vsl.toml")
    metric = config.metrics.script_metric("spam_hit")
    assert metric.labels == (("reason", ("rbl", "content")),)
    assert metric.exported_name == "vsl_script_spam_hit_total"
    assert config.log.syslog_target() == ("udp", ("::1", 514))
    assert from_dict({"log": {"syslog": "unix:/dev/log"}}).log.syslog_target() == \
        ("unix", "/dev/log")


@pytest.mark.parametrize("data, message", [
    ({"metrics": {"listen": "9187"}}, "metrics.listen: '9187' is not host:port"),
    ({"metrics": {"max_series": 2}}, "metrics.max_series: must be an integer >= 10"),
    ({"metrics": {"script": {"Spam": {}}}}, "metrics.script.Spam: a metric's name"),
    ({"metrics": {"script": {"s": {"colour": 1}}}}, "metrics.script.s.colour: unknown key"),
    ({"metrics": {"script": {"s": {"labels": {"le": ["a"]}}}}}, "metrics.script.s.labels.le"),
    ({"metrics": {"script": {"s": {"labels": {"ip": []}}}}}, "must be a non-empty array"),
    ({"metrics": {"script": {"s": {"labels": {"r": ["a", "a"]}}}}}, "a value is listed twice"),
    ({"metrics": {"script": {"s": {"labels": {"r": [1]}}}}}, "values are strings"),
    ({"metrics": {"script": {"s": {"labels": {"name": ["a"]}}}}},
     "metrics.script.s.labels.name: 'name' is reserved (an argument of the server's "
     "counting call)"),
    ({"metrics": {"script": {"s": {"labels": {"amount": ["a"]}}}}}, "'amount' is reserved"),
    ({"metrics": {"script": {"s": {"labels": {"self": ["a"]}}}}}, "'self' is reserved"),
    ({"metrics": {"script": {"errors": {}}}},
     "metrics.script.errors: exported as vsl_script_errors_total, which clashes with the "
     "server's vsl_script_errors_total in a scrape: choose another name"),
    ({"metrics": {"script": {"seconds": {}}}}, "clashes with the server's vsl_script_seconds"),
    ({"metrics": {"script": {"seconds_count": {}}}}, "clashes with the server's "
                                                       "vsl_script_seconds"),
    ({"metrics": {"script": {"errors_created": {}}}}, "clashes with the server's "
                                                        "vsl_script_errors_total"),
    ({"metrics": {"script": {"hits": {}, "hits_total": {}}}},
     "metrics.script.hits_total: exported as vsl_script_hits_total_total, which clashes "
     "with [metrics.script.hits]"),
    ({"log": {"format": "xml"}}, "log.format: must be one of text, json"),
    ({"log": {"syslog": "tcp://h:1"}}, "log.syslog: 'tcp://h:1' is not udp://host:port"),
    ({"log": {"syslog": "unix:dev/log"}}, "needs an absolute path"),
    ({"log": {"syslog_facility": "mial"}}, "log.syslog_facility: unknown facility 'mial'"),
    ({"log": {"syslog_sd_id": "vsl"}}, "log.syslog_sd_id: 'vsl' is not NAME@NUMBER"),
    ({"log": {"syslog_max_bytes": 100}}, "log.syslog_max_bytes: must be an integer >= 480"),
    ({"log": {"stderr": False}}, "log.stderr: false needs log.syslog"),
    ({"log": {"formt": "json"}}, "did you mean log.format?"),
])
def test_bad_values_are_named(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(data)
    assert message in str(err.value)
