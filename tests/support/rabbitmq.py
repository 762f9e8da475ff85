"""A private RabbitMQ node for tests: its own epmd, its own directory, every listener on
127.0.0.1, started, stopped and killed by the test through its own PIDs.

    with PrivateRabbitMQ() as broker:
        AmqpQueue(url=broker.url, ...) ...
        broker.stop()     # a clean stop; ports and data stay
        broker.start()    # a restart: durable queues and persistent messages are back
        broker.kill()     # SIGKILL of the Erlang VM: a crash
        broker.ctl("list_queues")

Why it is done this way (measured in design 16, section 1):

- The system's node is never used. ``/usr/lib/rabbitmq/bin/rabbitmq-server`` runs directly
  (the ``/usr/sbin`` wrapper changes to the user ``rabbitmq``), with ``HOME`` (where the
  Erlang cookie goes), the config, the Mnesia and log directories in a temporary one.
- Its own epmd on 127.0.0.1 and a free port (``ERL_EPMD_PORT``): a node or a
  ``rabbitmqctl`` without one starts ``epmd -daemon`` on 0.0.0.0:4369. For the same reason
  :meth:`ctl` always sets ``ERL_EPMD_PORT``.
- Ready means the AMQP handshake answers: the port opens only once the boot is complete.
- ``stop`` sends SIGTERM to the script (which stops the VM), ``kill`` SIGKILLs the VM
  (``beam.smp``, the script's child). Every process started is also stopped at exit
  (:mod:`atexit`), so an interrupted pytest leaves none behind.

Without the Debian package the test is skipped, or fails under CI=true
(``tests/support/tools.py``).
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .crash import stop_process
from .mailsink import free_port
from .tools import require

BIN = Path("/usr/lib/rabbitmq/bin")  # the scripts themselves, not /usr/sbin's su wrapper
USER, PASSWORD = "vsl", "secret"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0

CONFIG = """\
listeners.tcp.1 = 127.0.0.1:{port}
loopback_users = none
default_user = {user}
default_pass = {password}
log.console = false
log.file.level = info
"""


class PrivateRabbitMQ:
    """One RabbitMQ node and its epmd, of the test's own (see the module docstring)."""

    def __init__(self):
        require("rabbitmq-server", "rabbitmq-server")
        self.epmd_binary = require("epmd", "erlang-base")
        self.port, self.dist_port, self.epmd_port = free_port(), free_port(), free_port()
        self.node = f"vsltest{self.port}@localhost"
        self.directory = Path(tempfile.mkdtemp(prefix="vsl-rabbitmq-"))
        self.epmd: subprocess.Popen | None = None
        self.proc: subprocess.Popen | None = None  # the rabbitmq-server script
        self._write_files()
        atexit.register(self.close)

    @property
    def url(self) -> str:
        return f"amqp://{USER}:{PASSWORD}@127.0.0.1:{self.port}/"

    def url_with(self, password: str = PASSWORD, vhost: str = "") -> str:
        """The URL with another password or vhost (for login failures)."""
        return f"amqp://{USER}:{password}@127.0.0.1:{self.port}/{vhost}"

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> "PrivateRabbitMQ":
        """Start (or restart) the node; returns once it answers the AMQP handshake."""
        if self.epmd is None or self.epmd.poll() is not None:
            self.epmd = subprocess.Popen(
                [self.epmd_binary, "-port", str(self.epmd_port)],
                env=dict(os.environ, ERL_EPMD_ADDRESS="127.0.0.1"),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        log = open(self.directory / "server.out", "ab")
        with log:
            self.proc = subprocess.Popen([str(BIN / "rabbitmq-server")], env=self._env(),
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self._wait_ready()
        return self

    def stop(self) -> None:
        """A clean stop (SIGTERM to the script, then SIGKILL of the VM after 20 s); the
        ports and the data stay, so :meth:`start` restarts the same node."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        beam = self.beam_pid(proc)
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _kill(beam)
            proc.kill()
            proc.wait(5)
        _wait_gone(beam)

    def kill(self) -> None:
        """SIGKILL the Erlang VM: a broker crash (the script then exits too)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        beam = self.beam_pid(proc)
        _kill(beam)
        _wait_gone(beam)
        proc.wait(10)

    def close(self) -> None:
        """Stop the node and its epmd, and remove the directory."""
        self.stop()
        epmd, self.epmd = self.epmd, None
        stop_process(epmd)
        shutil.rmtree(self.directory, ignore_errors=True)
        atexit.unregister(self.close)

    def __enter__(self) -> "PrivateRabbitMQ":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- inspection --------------------------------------------------------------------
    def ctl(self, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl -n NODE ARGS`` against this node; its output (RuntimeError with
        it when the command fails)."""
        done = subprocess.run([str(BIN / "rabbitmqctl"), "-n", self.node, *args],
                              env=self._env(), capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def pids(self) -> list[int]:
        """The PIDs of the processes started and still running (epmd, script, VM)."""
        procs = [p for p in (self.epmd, self.proc) if p is not None and p.poll() is None]
        pids = [p.pid for p in procs]
        if self.proc in procs and (beam := self.beam_pid(self.proc)):
            pids.append(beam)
        return pids

    @staticmethod
    def beam_pid(proc: subprocess.Popen) -> int | None:
        """The Erlang VM the script started (its child ``beam.smp``), if running."""
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        try:
            pids = [int(pid) for pid in children.read_text().split()]
            return next((pid for pid in pids
                         if Path(f"/proc/{pid}/comm").read_text().strip() == "beam.smp"), None)
        except OSError:
            return None

    def log_tail(self, lines: int = 30) -> str:
        """The end of what the node wrote (script output and the node's log)."""
        texts = []
        logs = sorted((self.directory / "log").glob("*.log"))
        for path in [self.directory / "server.out", *logs]:
            try:
                texts.append(path.read_text(errors="replace"))
            except OSError:
                pass
        return "\n".join("\n".join(texts).splitlines()[-lines:])

    # -- internals ---------------------------------------------------------------------
    def _write_files(self) -> None:
        for sub in ("home", "mnesia", "log"):
            (self.directory / sub).mkdir()
        (self.directory / "rabbitmq.conf").write_text(
            CONFIG.format(port=self.port, user=USER, password=PASSWORD))
        (self.directory / "enabled_plugins").write_text("[].\n")

    def _env(self) -> dict[str, str]:
        d = self.directory
        return dict(
            os.environ, HOME=str(d / "home"), RABBITMQ_CONF_ENV_FILE="/dev/null",
            RABBITMQ_NODENAME=self.node, RABBITMQ_USE_LONGNAME="false",
            RABBITMQ_DIST_PORT=str(self.dist_port), ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"), RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_PID_FILE=str(d / "pid"))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.proc = None
                raise RuntimeError(f"rabbitmq-server exited while starting:\n{tail}")
            if amqp_answers(self.port):
                return
            time.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"rabbitmq-server did not answer in {START_TIMEOUT:.0f} s:\n{tail}")


def amqp_answers(port: int) -> bool:
    """Whether 127.0.0.1:``port`` answers the AMQP 0-9-1 protocol header (a Connection.Start
    frame comes back only once the broker has booted)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            return sock.recv(1) == b"\x01"  # frame type 1: a method frame
    except OSError:
        return False


def _kill(pid: int | None) -> None:
    if pid is not None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_gone(pid: int | None, timeout: float = 10) -> None:
    """Wait until ``pid`` (not our child: the script reaps it) has exited."""
    deadline = time.monotonic() + timeout
    while pid is not None and time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state == "Z":
            return
        time.sleep(0.05)
