"""A private Postfix instance for tests: its own config, queue and data directories under a
temporary directory, smtpd on a free loopback port, started and stopped by the test.

    with PrivatePostfix({"smtpd_recipient_restrictions": "reject"}) as postfix:
        smtplib.SMTP("127.0.0.1", postfix.port) ...
        postfix.maillog()                       # what Postfix logged (maillog_file)

The system Postfix (/etc/postfix) is neither used nor touched: every command runs with
``postfix -c DIR``, and the instance is stopped through its own master's PID. DIR is a
fresh directory of its own (``/tmp/vsl-postfix-*``, mode 0755: Postfix's daemons must
reach it, which pytest's 0700 ``tmp_path`` forbids), removed by ``stop()``. Postfix
needs root (its daemons change to the user ``postfix``); without root or the package the
test is skipped, or fails under CI=true (``tests/support/tools.py``).

By default nothing is delivered: mail for ``example.test`` is relayed to the ``discard``
transport, other domains are refused by Postfix's defaults (``reject_unauth_destination``).
``settings`` override or add ``main.cf`` lines; ``services`` add ``master.cf`` lines;
``tables`` (name -> (source text, kind)) are written with :meth:`table` before the start,
so main.cf may name them (``hash:$config_directory/access``); ``smtpd_options`` are the
smtpd service's ``-o name=value`` overrides in master.cf.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from .mailsink import free_port, listening
from .smtp_tools import wait_for
from .tools import missing, require

MASTER_CF = """\
{listen} inet n - n - - smtpd{options}
pickup     unix  n - n 60    1 pickup
cleanup    unix  n - n -     0 cleanup
qmgr       unix  n - n 300   1 qmgr
rewrite    unix  - - n -     - trivial-rewrite
bounce     unix  - - n -     0 bounce
defer      unix  - - n -     0 bounce
trace      unix  - - n -     0 bounce
verify     unix  - - n -     1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -     - proxymap
proxywrite unix  - - n -     1 proxymap
showq      unix  n - n -     - showq
error      unix  - - n -     - error
retry      unix  - - n -     - error
discard    unix  - - n -     - discard
anvil      unix  - - n -     1 anvil
scache     unix  - - n -     1 scache
smtp       unix  - - n -     - smtp
postlog    unix-dgram n - n - 1 postlogd
"""

BASE_SETTINGS = {
    "compatibility_level": "3.6",
    "myhostname": "mx.example.test",
    "mydomain": "example.test",
    "myorigin": "$myhostname",
    "inet_interfaces": "127.0.0.1",
    "inet_protocols": "ipv4",
    "mynetworks": "127.0.0.0/8",
    "mydestination": "",
    "relay_domains": "example.test",
    "default_transport": "discard",
    "relay_transport": "discard",
    "alias_maps": "",
    "alias_database": "",
    "smtpd_banner": "$myhostname ESMTP",
    "biff": "no",
    "disable_dns_lookups": "yes",
    "smtp_host_lookup": "native",
    "smtpd_peername_lookup": "no",
}


class PrivatePostfix:
    """One throw-away Postfix instance (see the module docstring)."""

    def __init__(self, settings: dict[str, str] | None = None, services: str = "",
                 tables: dict[str, tuple[str, str]] | None = None, smtpd_options: str = ""):
        self.dir = Path(tempfile.mkdtemp(prefix="vsl-postfix-"))
        self.etc, self.spool = self.dir / "etc", self.dir / "spool"
        self.settings = {**BASE_SETTINGS, **(settings or {})}
        self.services = services
        self.tables = tables or {}
        self.smtpd_options = smtpd_options
        self.port = 0
        self._master: int | None = None

    # ---- life cycle ------------------------------------------------------------------

    def start(self) -> "PrivatePostfix":
        self.postfix = require("postfix", "postfix")
        if os.geteuid() != 0:
            missing("root (Postfix's daemons change to the user postfix)", "postfix")
        self.port = free_port()
        for sub in (self.etc, self.spool, self.dir / "data"):
            sub.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        shutil.chown(self.dir / "data", "postfix")
        self.write_config()
        for name, (text, kind) in self.tables.items():
            self.table(name, text, kind)
        self.run("check")  # creates the queue directories with the owners Postfix wants
        self.run("start")
        self._master = self._master_pid()
        self._wait_listening()
        return self

    def stop(self) -> None:
        """Stops this instance (and only it: its master's PID), waiting for the exit."""
        if self._master is None:
            return
        pid, self._master = self._master, None
        self.run("stop", check=False)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def reload(self) -> None:
        """Rewrites main.cf/master.cf from ``settings``/``services`` and reloads Postfix."""
        self.write_config()
        self.run("reload")

    def __enter__(self) -> "PrivatePostfix":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- files -------------------------------------------------------------------------

    def write_config(self) -> None:
        settings = {**self.settings, "config_directory": str(self.etc),
                    "queue_directory": str(self.spool),
                    "data_directory": str(self.dir / "data"),
                    "maillog_file": str(self.dir / "maillog"),
                    "maillog_file_prefixes": str(self.dir)}
        (self.etc / "main.cf").write_text(
            "".join(f"{name} = {value}\n" for name, value in settings.items()))
        (self.etc / "master.cf").write_text(
            MASTER_CF.format(listen=f"127.0.0.1:{self.port}",
                             options=f" {self.smtpd_options}" if self.smtpd_options else "")
            + self.services)

    def table(self, name: str, text: str, kind: str = "hash") -> str:
        """Writes a lookup table's source in etc/ (``postmap`` for indexed kinds) and
        returns the ``kind:path`` to name it with in main.cf."""
        path = self.etc / name
        path.write_text(text)
        if kind in ("hash", "btree", "lmdb", "cdb"):
            subprocess.run([require("postmap", "postfix"), "-c", str(self.etc),
                            f"{kind}:{path}"], check=True, capture_output=True, timeout=60)
        return f"{kind}:{path}"

    def maillog(self) -> str:
        try:
            return (self.dir / "maillog").read_text(errors="replace")
        except OSError:
            return ""

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([self.postfix, "-c", str(self.etc), *args], capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)
        if check and proc.returncode:
            pytest.fail(f"postfix {' '.join(args)} failed ({proc.returncode}): "
                        f"{proc.stderr.strip()}\n{self.maillog()[-2000:]}")
        return proc

    def _master_pid(self) -> int | None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                return int((self.spool / "pid" / "master.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                time.sleep(0.05)
        return None

    def _wait_listening(self, timeout: float = 30.0) -> None:
        if wait_for(lambda: listening(self.port), timeout, 0.05):
            return
        self.stop()
        pytest.fail(f"Postfix does not listen on {self.port}:\n{self.maillog()[-2000:]}")


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()
