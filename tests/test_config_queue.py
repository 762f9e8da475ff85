"""[queue] in vsl.toml: its keys and defaults, every refused form with its error (naming
the key, never the broker's password), the URL resolved from url, url_file or url_env at
load time, and AMQP URLs checked and redacted."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vsl.server.config import (AMQP_MAX_MESSAGE_SIZE, Config, ConfigError, QueueConfig,
                               from_dict, load)
from vsl.stdlib.support.urls import amqp_url_problem, redacted
from tests.support.crash import VSL

URL = "amqp://vsl:secret@mq.example:5672/mail"


def queue_error(queue: dict, **sections) -> str:
    """The ConfigError of a [queue] table (and other sections), checked to hold no
    password."""
    with pytest.raises(ConfigError) as err:
        from_dict({"queue": queue, **sections})
    assert "secret" not in str(err.value)
    return str(err.value)


def test_the_default_is_the_spool():
    assert from_dict({}).queue == QueueConfig() == Config().queue
    assert QueueConfig() == QueueConfig("spool", None, None, None, "vsl", "quorum", 30.0, 5.0)


def test_every_key_parses(tmp_path):
    config = from_dict({"queue": {"backend": "rabbitmq", "url": URL, "prefix": "mx-1.eu_w",
                                  "queue_type": "classic", "confirm_timeout": 10,
                                  "connect_timeout": 2.5}})
    assert config.queue == QueueConfig("rabbitmq", URL, None, None, "mx-1.eu_w", "classic",
                                       10.0, 2.5)
    assert config.queue.resolved_url() == URL


def test_explicit_defaults_go_with_the_spool():
    config = from_dict({"queue": {"backend": "spool", "prefix": "vsl", "queue_type": "quorum",
                                  "confirm_timeout": 30}})
    assert config.queue == QueueConfig()


@pytest.mark.parametrize("queue, message", [
    ({"backend": "kafka"}, "queue.backend: unknown backend 'kafka' (use spool or rabbitmq)"),
    ({"url": URL}, "queue.url: only for backend = \"rabbitmq\""),
    ({"url_file": "f"}, "queue.url_file: only for backend = \"rabbitmq\""),
    ({"url_env": "VSL_AMQP_URL"}, "queue.url_env: only for backend = \"rabbitmq\""),
    ({"prefix": "mx"}, "queue.prefix: only for backend = \"rabbitmq\""),
    ({"queue_type": "classic"}, "queue.queue_type: only for backend = \"rabbitmq\""),
    ({"confirm_timeout": 5}, "queue.confirm_timeout: only for backend = \"rabbitmq\""),
    ({"connect_timeout": 1}, "queue.connect_timeout: only for backend = \"rabbitmq\""),
    ({"backend": "rabbitmq"}, "queue.url: backend \"rabbitmq\" needs one of queue.url, "
                              "queue.url_file and queue.url_env"),
    ({"backend": "rabbitmq", "url": URL, "url_file": "f"},
     "queue.url_file: give only one of queue.url, queue.url_file and queue.url_env"),
    ({"backend": "rabbitmq", "url": URL, "url_env": "VSL_AMQP_URL"},
     "queue.url_env: give only one of queue.url, queue.url_file and queue.url_env"),
    ({"backend": "rabbitmq", "url": URL, "prefix": "vsl queue"},
     "queue.prefix: 'vsl queue' must be 1 to 64 letters, digits, '_', '.' or '-'"),
    ({"backend": "rabbitmq", "url": URL, "prefix": "p" * 65},
     f"queue.prefix: '{'p' * 65}' must be 1 to 64 letters, digits, '_', '.' or '-'"),
    ({"backend": "rabbitmq", "url": URL, "prefix": ""},
     "queue.prefix: must be a non-empty string, not ''"),
    ({"backend": "rabbitmq", "url": URL, "queue_type": "stream"},
     "queue.queue_type: unknown type 'stream' (use quorum or classic)"),
    ({"backend": "rabbitmq", "url": URL, "confirm_timeout": 0},
     "queue.confirm_timeout: must be a number > 0, not 0"),
    ({"backend": "rabbitmq", "url": URL, "connect_timeout": -1},
     "queue.connect_timeout: must be a number > 0, not -1"),
    ({"backend": "rabbitmq", "url": URL, "confirm_timeout": float("inf")},
     "queue.confirm_timeout: must be a finite number > 0, not inf"),
    ({"backend": "rabbitmq", "url": URL, "connect_timeout": float("nan")},
     "queue.connect_timeout: must be a finite number > 0, not nan"),
    ({"backend": "rabbitmq", "url": 5672}, "queue.url: must be a non-empty string, not 5672"),
    ({"backend": "rabbitmq", "url": "redis://u:secret@mq/0"},
     "queue.url: must start with amqp:// or amqps://"),
    ({"backend": "rabbitmq", "url": "amqp://u:secret@mq:99999/"},
     "queue.url: is not a URL (amqp://user:password@host:port/vhost)"),
    ({"backend": "rabbitmq", "url_env": "VSL_TEST_NO_SUCH_VARIABLE"},
     "queue.url_env VSL_TEST_NO_SUCH_VARIABLE is not set"),
    ({"backend": "rabbitmq", "url_env": URL},
     "queue.url_env: must be the name of an environment variable (letters, digits and '_'), "
     "not the URL itself"),
    ({"backend": "rabbitmq", "url_file": "/nonexistent/amqp-url"},
     "queue.url_file: cannot read /nonexistent/amqp-url: No such file or directory"),
    ({"exchange": "x"}, "queue.exchange: unknown key (known: backend, url, url_file, "
                        "url_env, prefix, queue_type, confirm_timeout, connect_timeout)"),
])
def test_refused_forms_are_errors_naming_the_key(queue, message):
    assert queue_error(queue) == message


def test_every_problem_of_the_section_is_reported():
    message = queue_error({"backend": "rabbitmq", "prefix": "a b", "queue_type": "x"})
    assert message.splitlines() == [
        "queue.prefix: 'a b' must be 1 to 64 letters, digits, '_', '.' or '-'",
        "queue.queue_type: unknown type 'x' (use quorum or classic)",
        "queue.url: backend \"rabbitmq\" needs one of queue.url, queue.url_file and "
        "queue.url_env"]


@pytest.mark.parametrize("size, message", [
    (0, "limits.message_size: 0 (no limit) cannot go with queue.backend = \"rabbitmq\": the "
        "broker refuses messages over its max_message_size (128 MiB); give at most "
        "133169152 (127 MiB)"),
    (AMQP_MAX_MESSAGE_SIZE + 1,
     "limits.message_size: must be at most 133169152 (127 MiB) with queue.backend = "
     "\"rabbitmq\": the broker refuses messages over its max_message_size (128 MiB, the "
     "envelope included), not 133169153"),
])
def test_the_broker_bounds_the_message_size(size, message):
    assert queue_error({"backend": "rabbitmq", "url": URL},
                       limits={"message_size": size}) == message


@pytest.mark.parametrize("size", [1, AMQP_MAX_MESSAGE_SIZE])
def test_message_sizes_the_broker_carries(size):
    config = from_dict({"queue": {"backend": "rabbitmq", "url": URL},
                        "limits": {"message_size": size}})
    assert config.limits.message_size == size
    assert from_dict({"limits": {"message_size": 0}}).limits.message_size == 0  # the spool's


def test_the_url_from_a_file_is_stripped_and_read_again(tmp_path):
    (tmp_path / "amqp-url").write_text(f"  {URL}\n")
    (tmp_path / "amqp-url").chmod(0o600)
    config = from_dict({"queue": {"backend": "rabbitmq", "url_file": "amqp-url"}},
                       base=tmp_path)
    assert config.queue.url_file == tmp_path / "amqp-url"
    assert config.queue.resolved_url() == URL
    (tmp_path / "amqp-url").write_text("amqps://vsl:new@mq.example/mail")
    assert config.queue.resolved_url() == "amqps://vsl:new@mq.example/mail"


def test_a_url_file_others_may_read_is_a_warning(tmp_path, caplog):
    url_file = tmp_path / "amqp-url"
    url_file.write_text(URL)
    for mode, warned in ((0o600, False), (0o604, True), (0o640, True)):
        url_file.chmod(mode)
        caplog.clear()
        with caplog.at_level("WARNING"):
            QueueConfig("rabbitmq", url_file=url_file).resolved_url()
        assert ("queue.url_file: " in caplog.text and "can be read by others than its owner "
                "(it may hold the broker's password): chmod 600 it" in caplog.text) == warned
        assert "secret" not in caplog.text


def test_a_bad_url_in_a_file_names_the_file_not_the_url(tmp_path):
    (tmp_path / "amqp-url").write_text("http://vsl:secret@mq/")
    (tmp_path / "amqp-url").chmod(0o600)
    message = queue_error({"backend": "rabbitmq", "url_file": str(tmp_path / "amqp-url")})
    assert message == f"queue.url_file ({tmp_path / 'amqp-url'}): must start with amqp:// " \
                      "or amqps://"


def test_the_url_from_the_environment(monkeypatch):
    monkeypatch.setenv("VSL_AMQP_URL", URL)
    config = from_dict({"queue": {"backend": "rabbitmq", "url_env": "VSL_AMQP_URL"}})
    assert config.queue.url_env == "VSL_AMQP_URL" and config.queue.resolved_url() == URL
    monkeypatch.setenv("VSL_AMQP_URL", "")
    with pytest.raises(ConfigError, match="^queue.url_env VSL_AMQP_URL is not set$"):
        config.queue.resolved_url()
    monkeypatch.delenv("VSL_AMQP_URL")
    with pytest.raises(ConfigError, match="^queue.url_env VSL_AMQP_URL is not set$"):
        config.queue.resolved_url()
    monkeypatch.setenv("VSL_AMQP_URL", "amqp://vsl:secret@mq/a/b")
    assert queue_error({"backend": "rabbitmq", "url_env": "VSL_AMQP_URL"}) == \
        "queue.url_env (VSL_AMQP_URL): has a vhost with a '/' in it (write it as %2F: " \
        "amqp://host/%2F is the vhost \"/\")"


def test_resolved_url_without_a_source_says_what_is_missing():
    with pytest.raises(ConfigError, match="needs one of queue.url, queue.url_file"):
        QueueConfig("rabbitmq").resolved_url()


def test_no_password_in_the_repr_of_a_config():
    config = from_dict({"queue": {"backend": "rabbitmq", "url": URL},
                        "state": {"backend": "redis", "url": "redis://u:secret@cache/0"}})
    assert "secret" not in repr(config) and "secret" not in str(config)
    assert "QueueConfig(backend='rabbitmq', url_file=None" in repr(config)


def test_a_file_names_itself_in_queue_errors(tmp_path):
    (tmp_path / "vsl.toml").write_text('[queue]\nbackend = "rabbitmq"\n'
                                       'url_env = "VSL_TEST_NO_SUCH_VARIABLE"\n')
    with pytest.raises(ConfigError) as err:
        load(tmp_path / "vsl.toml")
    assert str(err.value) == \
        f"{tmp_path / 'vsl.toml'}: queue.url_env VSL_TEST_NO_SUCH_VARIABLE is not set"


def test_vsl_serve_stops_at_once_without_its_broker_url(tmp_path):
    (tmp_path / "vsl.toml").write_text('[queue]\nbackend = "rabbitmq"\n'
                                       'url_env = "VSL_TEST_NO_SUCH_VARIABLE"\n')
    result = subprocess.run([VSL, "serve", "--config", "vsl.toml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "queue.url_env VSL_TEST_NO_SUCH_VARIABLE is not set" in result.stderr


# ---- AMQP URLs -------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "amqp://mq", "amqp://mq/", "amqp://mq:5672", "amqps://vsl:secret@mq.example:5671/mail",
    "amqp://vsl:s%40cr%2Fet@[::1]:5672/%2F", "amqp://mq/mail%2Fout",
    "amqp://mq/mail?heartbeat=30&name=receiver-1",
    "amqps://mq/?cafile=/etc/ca.pem&certfile=c.pem&keyfile=k.pem&no_verify_ssl=0",
    "amqps://mq/?capath=/etc/ssl/certs&no_verify_ssl=1",
])
def test_amqp_urls_the_queue_takes(url):
    assert amqp_url_problem(url) is None


@pytest.mark.parametrize("url, problem", [
    ("", "must start with amqp:// or amqps://"),
    ("mq.example:5672", "must start with amqp:// or amqps://"),
    ("http://vsl:secret@mq/", "must start with amqp:// or amqps://"),
    ("amqp://vsl:secret@mq:port/", "is not a URL (amqp://user:password@host:port/vhost)"),
    ("amqp://vsl:secret@mq:65536/", "is not a URL (amqp://user:password@host:port/vhost)"),
    ("amqp://vsl:secret@mq:0/", "has port 0"),
    ("amqp://vsl:secret@/mail", "has no host"),
    ("amqp://vsl:secret@mq/mail/out",
     "has a vhost with a '/' in it (write it as %2F: amqp://host/%2F is the vhost \"/\")"),
    ("amqp://mq/?password=secret",
     "has a query key it does not take (only heartbeat, name, cafile, capath, keyfile, "
     "certfile, no_verify_ssl)"),
    ("amqp://mq/?connection_timeout=5000",
     "has a query key it does not take (only heartbeat, name, cafile, capath, keyfile, "
     "certfile, no_verify_ssl)"),
    ("amqp://mq/?heartbeat", "is not a URL (amqp://user:password@host:port/vhost)"),
    ("amqp://mq/?heartbeat=", "has a heartbeat that is not a number of seconds 0-65535 "
                              "(?heartbeat=60)"),
    ("amqp://mq/?heartbeat=65536", "has a heartbeat that is not a number of seconds 0-65535 "
                                   "(?heartbeat=60)"),
    ("amqps://mq/?no_verify_ssl=yes", "has a no_verify_ssl that is not 0 or 1"),
    ("amqp://mq/?cafile=/etc/ca.pem",
     "sets cafile, capath, keyfile, certfile, no_verify_ssl only for amqps://"),
])
def test_amqp_urls_the_queue_refuses_without_quoting_them(url, problem):
    assert amqp_url_problem(url) == problem


@pytest.mark.parametrize("url, shown", [
    (URL, "amqp://vsl:***@mq.example:5672/mail"),
    ("amqps://vsl:secret@mq/%2F?heartbeat=5", "amqps://vsl:***@mq/%2F?***"),
    ("amqp://mq.example/mail", "amqp://mq.example/mail"),
    ("amqp://vsl@mq.example/mail", "amqp://vsl@mq.example/mail"),
    ("amqp://:secret@mq.example/", "amqp://:***@mq.example/"),
])
def test_redacted_amqp_urls_hide_the_password(url, shown):
    assert redacted(url) == shown


def test_the_scale_out_example_loads(tmp_path):
    """examples/rabbitmq/vsl.toml, its secrets where compose.yaml mounts them, is a valid
    broker configuration serving examples/policy."""
    example = Path(__file__).resolve().parent.parent / "examples" / "rabbitmq"
    secrets = {"/run/secrets/amqp-url": "amqp://vsl:pw@broker:5672/mail",
               "/run/secrets/redis-url": "redis://redis:6379/0"}
    text = (example / "vsl.toml").read_text().replace('"../policy"',
                                                       f'"{example.parent / "policy"}"')
    for path, url in secrets.items():
        secret = tmp_path / Path(path).name
        secret.write_text(url + "\n")
        secret.chmod(0o600)
        text = text.replace(path, str(secret))
    (tmp_path / "vsl.toml").write_text(text)
    config = load(tmp_path / "vsl.toml")
    assert (config.queue.backend, config.queue.resolved_url()) == ("rabbitmq", secrets[
        "/run/secrets/amqp-url"])
    assert config.state.backend == "redis" and (config.scripts / "main.vsl").is_file()
