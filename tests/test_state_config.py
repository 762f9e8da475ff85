"""[state] in vsl.toml: its keys and defaults, bad values as errors naming the key (a
Redis password never in them), and opening the store: a start-up error for a file that
cannot be opened, through `vsl serve` and `vsl policyd` too."""
from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from vsl.server.config import ConfigError, StateConfig, from_dict, load
from vsl.server.state_store import open_state
from vsl.stdlib.support.state.redis_store import RedisStore
from vsl.stdlib.support.state.sqlite_store import SqliteStore
from tests.support.crash import VSL


def test_defaults_are_sqlite_beside_the_queue():
    config = from_dict({"server": {"queue_dir": "/var/spool/vsl/queue"}})
    assert config.state == StateConfig("sqlite", None, None, None, None)
    assert config.state_path == Path("/var/spool/vsl/state.sqlite")


def test_every_key_parses(tmp_path):
    config = from_dict({"state": {"backend": "redis", "url": "rediss://u:pw@cache:6380/1",
                                  "timeout": 0.5}}, base=tmp_path)
    assert config.state == StateConfig("redis", None, "rediss://u:pw@cache:6380/1", None, 0.5)
    config = from_dict({"state": {"path": "s.db"}}, base=tmp_path)
    assert config.state_path == tmp_path / "s.db"
    config = from_dict({"state": {"backend": "redis", "url_file": "redis-url"}}, base=tmp_path)
    assert config.state.url_file == tmp_path / "redis-url"


@pytest.mark.parametrize("state, message", [
    ({"backend": "memcached"}, "state.backend: unknown backend 'memcached' (use sqlite or redis)"),
    ({"backend": "redis"}, "state.url: backend \"redis\" needs one of state.url and "
                           "state.url_file"),
    ({"backend": "redis", "url": "redis://h/0", "url_file": "f"},
     "state.url_file: give only one of state.url and state.url_file"),
    ({"url": "redis://h/0"}, "state.url: only for backend = \"redis\""),
    ({"url_file": "f"}, "state.url_file: only for backend = \"redis\""),
    ({"timeout": 2}, "state.timeout: only for backend = \"redis\""),
    ({"backend": "redis", "url": "redis://h/0", "path": "s.db"},
     "state.path: only for backend = \"sqlite\""),
    ({"backend": "redis", "url": "redis://h/0?db=zz&password=secret"},
     "state.url: has a database that is not a number"),
    ({"backend": "redis", "url": "http://u:secret@h/0"},
     "state.url: must start with redis:// or rediss://"),
    ({"backend": "redis", "url": "redis://u:secret@h:70000/0"}, "state.url: is not a URL"),
    ({"backend": "redis", "url": "redis://h/0", "timeout": 0},
     "state.timeout: must be a number > 0"),
    ({"size": 1}, "state.size: unknown key"),
])
def test_bad_values_are_errors_naming_the_key(state, message):
    with pytest.raises(ConfigError) as err:
        from_dict({"state": state})
    assert message in str(err.value) and "secret" not in str(err.value)


def test_open_state_opens_the_configured_store(tmp_path):
    sqlite = open_state(from_dict({"server": {"queue_dir": "q"}}, base=tmp_path))
    assert isinstance(sqlite, SqliteStore) and sqlite.path == tmp_path / "state.sqlite"
    (tmp_path / "url").write_text("redis://u:secret@127.0.0.1:1/0\n")
    redis = open_state(from_dict({"state": {"backend": "redis", "url_file": "url"}},
                                 base=tmp_path))
    assert isinstance(redis, RedisStore) and str(redis) == "redis redis://u:***@127.0.0.1:1/0"
    assert str(sqlite) == f"sqlite {tmp_path / 'state.sqlite'}"  # as the server logs them
    for store in (sqlite, redis):
        asyncio.run(store.close())


def test_a_url_file_others_may_read_is_a_warning(tmp_path, caplog):
    url_file = tmp_path / "url"
    url_file.write_text("redis://u:secret@127.0.0.1:1/0?password=secret\n")
    config = from_dict({"state": {"backend": "redis", "url_file": "url"}}, base=tmp_path)
    for mode, warned in ((0o600, False), (0o640, True)):
        url_file.chmod(mode)
        caplog.clear()
        with caplog.at_level("WARNING"):
            store = open_state(config)
        asyncio.run(store.close())
        assert ("can be read by others" in caplog.text) == warned
        assert "secret" not in caplog.text and "secret" not in str(store)


def test_an_unreadable_or_bad_url_file_is_an_error(tmp_path):
    config = from_dict({"state": {"backend": "redis", "url_file": "missing"}}, base=tmp_path)
    with pytest.raises(ConfigError, match="state.url_file: cannot read"):
        open_state(config)
    (tmp_path / "missing").write_text("http://u:secret@h/0")
    with pytest.raises(ConfigError, match="state.url_file .*: must start with redis://") as err:
        open_state(config)
    assert "secret" not in str(err.value)


def test_a_file_that_cannot_be_opened_is_an_error_naming_the_key(tmp_path):
    (tmp_path / "a-file").write_text("")  # missing directories are made; a file's are not
    config = from_dict({"state": {"path": "a-file/dir/state.sqlite"}}, base=tmp_path)
    with pytest.raises(ConfigError, match="state.path: cannot open .*a-file is not a directory"):
        open_state(config)


@pytest.mark.parametrize("command", [["serve"], ["policyd", "--scripts", "."]])
def test_vsl_refuses_to_start_without_its_state(tmp_path, command):
    (tmp_path / "main.vsl").write_text("fn on_rcpt_to(ctx) { status::accept() }\n")
    (tmp_path / "a-file").write_text("")
    (tmp_path / "vsl.toml").write_text('[state]\npath = "a-file/state.sqlite"\n')
    result = subprocess.run([VSL, *command, "--config", "vsl.toml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "state.path: cannot open" in result.stderr, result.stderr


def test_the_example_file_has_the_defaults():
    config = load(Path(__file__).parent.parent / "examples" / "vsl.toml")
    assert config.state == StateConfig()
