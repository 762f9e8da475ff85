"""Messages per second under loopback load from Postfix's smtp-source: vSL holding every
message in its spool or on a RabbitMQ broker, Debian's Postfix holding every message in its
hold queue, and a bare aiosmtpd sink that discards them, in the same run.

    python bench/throughput.py [--messages 10000] [--sessions 4,16] [--sizes 10k,100k]
    python bench/throughput.py --quick          # 1,000 messages: a try-out in a minute or two
    python bench/throughput.py --receivers 1,2  # a vSL column per [server] workers value
    python bench/throughput.py --event-loops asyncio,uvloop  # a vSL column per event loop
    python bench/throughput.py --baseline /tmp/base  # each vSL column again, run by the
                                            # checkout /tmp/base's .venv (before/after)
    python bench/throughput.py --backend spool,rabbitmq --receivers 1,2 --sessions 16 \
        --sizes 10k                             # issue 16: the broker against the spool

* vSL: `vsl serve` with a one-line policy, `fn on_connect(ctx) { status::quarantine("hold") }`.
  - backend spool: every accepted message is written durably to `quarantine/hold` of its
    spool (role all).
  - backend rabbitmq: `vsl serve --role receiver` publishes every accepted message to
    `<prefix>.quarantine` of a private RabbitMQ node (tests/support/rabbitmq.py: its own
    epmd, ports and temporary directory; one node per vSL column, stopped after it) and
    waits for the broker's confirm before its 250. Messages held are counted by a passive
    declare (AmqpQueue.counts()), and the broker's CPU (the Erlang VM) counts as server CPU.
  - --receivers N: `[server] workers = N`, N processes accepting on one port (the kernel
    spreads the connections), so smtp-source needs no split. With the spool, child 0 also
    runs delivery, idle here. `--receivers default` (the default) leaves `workers` out of
    the configuration: what `vsl serve` does untuned ("auto", one process per core).
  - --event-loops: `[server] event_loop` of each vSL column (default: the configured
    default, "auto": uvloop where installed).
  - --baseline DIR: each vSL column is followed by the same one served by DIR's
    `.venv/bin/vsl` (another checkout, e.g. main before a change), named "... (base)", and
    the ratio of the two is shown.
* Postfix: a throw-away instance in a temporary directory (its own config_directory,
  queue_directory and data_directory, `inet_interfaces = 127.0.0.1`, smtpd on a free port,
  `smtpd_recipient_restrictions = static:hold`, discard transports), started and stopped with
  `postfix -c DIR start|stop`. The system Postfix (/etc/postfix) is neither used nor touched.
  Needs root and /usr/sbin/postfix; skipped (and said so) otherwise.
* sink: aiosmtpd with a handler that answers 250 and keeps nothing.

Each server runs on its own. After its start it gets a warm-up load, then for every
(sessions x size): its queue is emptied, the disk synced, the server left to settle (and,
up to --quiet-wait, the machine left to go quiet: other sessions' load skews the rates), then
smtp-source sends the messages (one connection per message, as smtp-source does without -d)
and the run is timed from smtp-source's start to its exit. Every run is checked: smtp-source
must exit 0 (it stops at the first unexpected reply), and the number of messages held (vSL:
envelope files in quarantine/hold; Postfix: files in its hold queue; sink: its own counter)
must equal the number sent. `server CPU` is the CPU time of the server's processes (Postfix:
master and every child) per message; `client CPU` is smtp-source's; `other load` is the CPU
used meanwhile by everything else on the machine (in CPUs), and a run during which it
exceeds --noisy is flagged: its rate is not trustworthy. Each smtp-source run is bounded by
--timeout.
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support.postfix import MASTER_CF  # noqa: E402 - the tests' throw-away master.cf
from tests.support.rabbitmq import BIN as RABBITMQ_BIN, PrivateRabbitMQ  # noqa: E402
from vsl.server.queue_amqp import AmqpQueue  # noqa: E402

VSL = Path(sys.executable).parent / "vsl"
DEFAULT = "default"  # --receivers: leave [server] workers to its default
POSTFIX = Path("/usr/sbin/postfix")
POSTSUPER = Path("/usr/sbin/postsuper")
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
CLK_TCK = os.sysconf("SC_CLK_TCK")

SENDER = "bench@example.org"
RECIPIENT = "rcpt@example.test"  # example.test: vSL's --hostname, Postfix's relay_domains
HOLD_POLICY = 'fn on_connect(ctx) { status::quarantine("hold") }\n'

# The end of a sink's script: it serves its class Sink, and writes report() on SIGUSR1.
SINK_SERVING = """
def dump(path):
    with open(path + ".tmp", "w") as fh:
        fh.write(report())
    os.replace(path + ".tmp", path)

async def main():
    loop = asyncio.get_running_loop()
    port, count_file = int(sys.argv[1]), sys.argv[2]
    loop.add_signal_handler(signal.SIGUSR1, dump, count_file)
    server = await loop.create_server(lambda: SMTP(Sink(), hostname="sink.example.test"),
                                      "127.0.0.1", port)
    await server.serve_forever()

asyncio.run(main())
"""
SINK = """
import asyncio, os, signal, sys
from aiosmtpd.smtp import SMTP

count = 0

class Sink:
    async def handle_DATA(self, server, session, envelope):
        global count
        count += 1
        return "250 2.0.0 Ok"

def report():
    return str(count)
""" + SINK_SERVING

POSTFIX_MAIN_CF = """\
# A throw-away instance for bench/throughput.py: holds every message, delivers nothing.
compatibility_level = 3.6
config_directory = {dir}/etc
queue_directory = {dir}/spool
data_directory = {dir}/data
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
myhostname = bench.example.test
mydomain = example.test
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
relay_domains = example.test
alias_maps =
alias_database =
smtpd_recipient_restrictions = static:hold
# a safety net only: held messages never reach the queue manager
default_transport = discard
relay_transport = discard
local_transport = discard
biff = no
"""


class BenchError(Exception):
    """A server failed to start, or a run went wrong."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, alive=lambda: True, describe=lambda: "", timeout=30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise BenchError(f"the server exited during its start:\n{describe()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listens on port {port} after {timeout:.0f}s:\n{describe()}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live descendants, plus the children they reaped."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = sum(int(f) for f in fields[11:15]) / CLK_TCK  # u, s, cu, cs
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(times.get(p, 0.0) for p in tree)


def system_busy() -> float:
    """CPU seconds the whole machine spent busy (every process, every CPU)."""
    with open("/proc/stat") as fh:
        fields = [int(f) for f in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK  # guest time is already in user


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---- servers ------------------------------------------------------------------------------

class Server:
    name = "?"
    port = 0

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def held(self) -> int: ...
    def empty(self) -> None: ...
    def cpu(self) -> float: ...
    def describe(self) -> str: return ""
    def errors(self) -> list[str]: return []


class ProcessServer(Server):
    """A server that is one child process logging to ``self.log``."""

    log: Path
    proc: subprocess.Popen | None = None

    def launch(self, command: list[str], cwd: Path | None = None) -> None:
        """Start the process and wait until it listens on ``self.port``."""
        self.spawn(command, cwd)
        wait_port(self.port, lambda: self.proc.poll() is None, self.describe)

    def spawn(self, command: list[str], cwd: Path | None = None) -> None:
        with open(self.log, "wb") as out:  # a file, never a pipe: a full pipe stalls it
            self.proc = subprocess.Popen(command, stdout=out, stderr=out,
                                         stdin=subprocess.DEVNULL, cwd=cwd)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def cpu(self) -> float:
        return tree_cpu(self.proc.pid)

    def describe(self) -> str:
        return tail(self.log)


class VslServer(ProcessServer):
    """`vsl serve` holding every message in its spool, with ``receivers`` processes."""

    backend = "spool"
    policy = HOLD_POLICY

    def __init__(self, work: Path, receivers: int | str = DEFAULT, event_loop: str = "auto",
                 baseline: Path | None = None):
        self.receivers, self.event_loop = receivers, event_loop
        self.vsl = baseline / ".venv" / "bin" / "vsl" if baseline else VSL
        self.name = (f"vSL {self.backend}" + ("" if event_loop == "auto" else f" {event_loop}")
                     + ("" if receivers == DEFAULT else f" x{receivers}")
                     + (BASE_SUFFIX if baseline else ""))
        self.work = work / (f"vsl-{self.backend}-{event_loop}-x{receivers}"
                            + ("-base" if baseline else ""))
        self.scripts = self.work / "scripts"
        self.queue = self.work / "queue"
        self.log = self.work / "server.log"

    def command(self) -> list[str]:
        return [str(self.vsl), "serve", "--config", str(self.work / "vsl.toml"),
                "--listen", f"127.0.0.1:{self.port}", "--scripts", str(self.scripts),
                "--queue-dir", str(self.queue), "--hostname", "example.test"]

    def config(self) -> str:
        workers = "" if self.receivers == DEFAULT else f"workers = {self.receivers}\n"
        return (f"[server]\n{workers}event_loop = \"{self.event_loop}\"\n\n"
                "[limits]\nconnections = 1000\nconnections_per_ip = 1000\n")

    def start(self) -> None:
        self.scripts.mkdir(parents=True)
        (self.scripts / "main.vsl").write_text(self.policy)
        (self.work / "vsl.toml").write_text(self.config())
        self.port = free_port()
        self.launch(self.command(), cwd=self.work)

    def hold_dir(self) -> Path:
        return self.queue / "quarantine" / "hold"

    def held(self) -> int:
        stray = [q for q in ("working", "deliver", "deferred", "dead", "hold", "tmp")
                 if any((self.queue / q).iterdir())]
        if stray:
            raise BenchError(f"vSL: messages outside quarantine/hold: {stray}")
        if not self.hold_dir().is_dir():
            return 0
        names = os.listdir(self.hold_dir())
        envelopes = sum(n.endswith(".json") for n in names)
        if sum(n.endswith(".eml") for n in names) != envelopes:
            raise BenchError("vSL: message and envelope files do not pair up")
        return envelopes

    def empty(self) -> None:
        if self.hold_dir().is_dir():
            for name in os.listdir(self.hold_dir()):
                os.unlink(self.hold_dir() / name)

    def errors(self) -> list[str]:
        return [line for line in self.log.read_text(errors="replace").splitlines()
                if " ERROR " in line or "Traceback" in line]


def start_broker() -> PrivateRabbitMQ:
    """A private RabbitMQ node, started (its close() stops it and removes its directory)."""
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        raise BenchError("rabbitmq-server is missing (apt-get install rabbitmq-server)")
    broker = PrivateRabbitMQ()
    try:
        return broker.start()
    except RuntimeError as err:
        broker.close()
        raise BenchError(str(err)) from None


class AmqpVslServer(VslServer):
    """`vsl serve --role receiver` on a private RabbitMQ node started with it: every message
    is confirmed in ``bench.quarantine`` before its 250."""

    backend = "rabbitmq"
    prefix = "bench"
    broker: PrivateRabbitMQ | None = None

    def command(self) -> list[str]:
        return super().command() + ["--role", "receiver"]

    def config(self) -> str:
        return super().config() + (f'\n[queue]\nbackend = "rabbitmq"\n'
                                   f'url = "{self.broker.url}"\nprefix = "{self.prefix}"\n')

    def start(self) -> None:
        self.broker = start_broker()
        super().start()

    def stop(self) -> None:
        super().stop()
        if self.broker is not None:
            self.broker.close()
            self.broker = None

    def held(self) -> int:
        counts = asyncio.run(self._on_broker(AmqpQueue.counts))
        stray = [q for q, n in counts.items() if n and q != "quarantine"]
        if stray:
            raise BenchError(f"vSL: messages outside {self.prefix}.quarantine: {stray}")
        return counts["quarantine"]

    def empty(self) -> None:
        asyncio.run(self._on_broker(self._purge))

    async def _on_broker(self, call):
        queue = AmqpQueue(self.broker.url, self.prefix)
        await queue.open()
        try:
            return await call(queue)
        finally:
            await queue.close()

    async def _purge(self, queue: AmqpQueue) -> None:
        async with queue.link.admin_channel() as channel:
            for physical in queue.topology.physical("quarantine"):
                await (await channel.declare_queue(physical, passive=True)).purge()

    def cpu(self) -> float:
        return super().cpu() + tree_cpu(self.broker.proc.pid)

    def describe(self) -> str:
        return super().describe() + (f"\nbroker:\n{self.broker.log_tail()}"
                                     if self.broker else "")


class PostfixServer(Server):
    name = "Postfix"

    def __init__(self, work: Path):
        self.dir = work / "postfix"
        self.etc = self.dir / "etc"
        self.spool = self.dir / "spool"
        self.started = False

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(POSTFIX), "-c", str(self.etc), *args], capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise BenchError(f"postfix {' '.join(args)} failed ({proc.returncode}): "
                             f"{proc.stderr.strip()}\n{self.describe()}")
        return proc

    def start(self) -> None:
        if os.geteuid() != 0:
            raise BenchError("Postfix needs root (its daemons change user to 'postfix')")
        if not POSTFIX.exists():
            raise BenchError(f"{POSTFIX} is missing (apt-get install postfix)")
        self.port = free_port()
        for sub in (self.etc, self.spool, self.dir / "data"):
            sub.mkdir(parents=True)
        shutil.chown(self.dir / "data", "postfix")
        (self.etc / "main.cf").write_text(POSTFIX_MAIN_CF.format(dir=self.dir))
        (self.etc / "master.cf").write_text(
            MASTER_CF.format(listen=f"127.0.0.1:{self.port}", options=""))
        self.run("check")  # creates the queue directories, owned as Postfix wants them
        self.started = True  # from here on, stop() must run
        self.run("start")
        wait_port(self.port, describe=self.describe)

    def master_pid(self) -> int | None:
        try:
            return int((self.spool / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        if not self.started:
            return
        pid = self.master_pid()
        self.run("stop", check=False)
        deadline = time.monotonic() + 20
        while pid and time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.2)
        if pid and Path(f"/proc/{pid}").exists():
            self.run("abort", check=False)
            time.sleep(1)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.started = False

    def held(self) -> int:
        busy = [q for q in ("incoming", "active", "deferred", "maildrop")
                if any(os.scandir(self.spool / q))]
        if busy:
            raise BenchError(f"Postfix: messages outside the hold queue: {busy}")
        return sum(1 for _ in os.scandir(self.spool / "hold"))

    def empty(self) -> None:
        proc = subprocess.run([str(POSTSUPER), "-c", str(self.etc), "-d", "ALL", "hold"],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise BenchError(f"postsuper -d ALL hold failed: {proc.stderr.strip()}")

    def cpu(self) -> float:
        pid = self.master_pid()
        return tree_cpu(pid) if pid else 0.0

    def describe(self) -> str:
        return tail(self.dir / "maillog")

    def errors(self) -> list[str]:
        log = self.dir / "maillog"
        if not log.exists():
            return []
        return [line for line in log.read_text(errors="replace").splitlines()
                if re.search(r"(fatal|panic|error|warning):", line)
                and "not owned by postfix" not in line]


class SinkServer(ProcessServer):
    """An aiosmtpd ``script`` in a process of its own, which writes what it counted to a
    file on SIGUSR1."""

    name = "sink"
    script = SINK

    def __init__(self, work: Path):
        self.work = work / "sink"
        self.count_file = self.work / "count"
        self.log = self.work / "sink.log"
        self.seen = 0

    def start(self) -> None:
        self.work.mkdir(parents=True)
        self.port = free_port()
        self.launch([sys.executable, "-c", self.script, str(self.port), str(self.count_file)])

    def dumped(self) -> str:
        """What the sink writes on SIGUSR1, now."""
        self.count_file.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not self.count_file.exists():
            if time.monotonic() > deadline:
                raise BenchError("the sink did not report its count")
            time.sleep(0.01)
        return self.count_file.read_text()

    def total(self) -> int:
        return int(self.dumped())

    def held(self) -> int:
        return self.total() - self.seen

    def empty(self) -> None:
        self.seen = self.total()

    def errors(self) -> list[str]:
        return [line for line in self.log.read_text(errors="replace").splitlines()
                if "Error" in line or "Traceback" in line]


VSL_BACKENDS = {"spool": VslServer, "rabbitmq": AmqpVslServer}
BASE_SUFFIX = " (base)"  # a column of --baseline's checkout
NAME_WIDTH = len("vSL rabbitmq asyncio x2" + BASE_SUFFIX)


# ---- load -----------------------------------------------------------------------------------

@dataclass
class Result:
    server: str
    sessions: int
    size: int
    messages: int
    seconds: float | None = None
    held: int | None = None
    server_cpu: float | None = None
    client_cpu: float | None = None
    other_cpu: float | None = None  # CPUs' worth used meanwhile by anything else
    error: str | None = None

    @property
    def rate(self) -> float | None:
        return self.messages / self.seconds if self.seconds and not self.error else None


def smtp_source(port: int, sessions: int, size: int, messages: int, timeout: float):
    """Send the messages; returns (seconds, client CPU seconds). Raises BenchError."""
    command = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size),
               "-f", SENDER, "-t", RECIPIENT, "-M", "client.example.org", "-S", "throughput",
               f"127.0.0.1:{port}"]
    cpu = children_cpu()
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BenchError(f"smtp-source did not finish within {timeout:.0f}s") from None
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"smtp-source exited {proc.returncode}: "
                         f"{(proc.stderr or proc.stdout).strip()[-300:]}")
    return seconds, children_cpu() - cpu


def count_held(server: Server, expected: int) -> int:
    """The server's count, given a moment to become stable (it should already be)."""
    count, deadline = server.held(), time.monotonic() + 10
    while count != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        count = server.held()
    return count


def settle(seconds: float, quiet_wait: float, noisy: float) -> None:
    """Sync the disk (the previous run's writes leave the page cache), give the server
    ``seconds`` of rest, then wait up to ``quiet_wait`` seconds for the rest of the
    machine to go quiet (other sessions' test suites, ...)."""
    os.sync()
    time.sleep(seconds)
    deadline, said = time.monotonic() + quiet_wait, False
    while time.monotonic() < deadline:
        busy = system_busy()
        time.sleep(1.0)
        load = system_busy() - busy
        if load <= noisy:
            return
        if not said:
            say(f"   waiting for the machine to go quiet ({load:.2f} CPU busy)")
            said = True


def bench_server(server: Server, args, results: list[Result]) -> None:
    say(f"== {server.name}: starting")
    try:
        server.start()
        if args.warmup:
            smtp_source(server.port, max(args.sessions), args.sizes[0], args.warmup,
                        args.timeout)
            count_held(server, args.warmup)
        for sessions in args.sessions:
            for size in args.sizes:
                result = Result(server.name, sessions, size, args.messages)
                results.append(result)
                try:
                    server.empty()
                    settle(args.settle, args.quiet_wait, args.noisy)
                    cpu, busy = server.cpu(), system_busy()
                    result.seconds, result.client_cpu = smtp_source(
                        server.port, sessions, size, args.messages, args.timeout)
                    result.server_cpu = server.cpu() - cpu
                    result.other_cpu = max(0.0, system_busy() - busy - result.server_cpu -
                                           result.client_cpu) / result.seconds
                    result.held = count_held(server, args.messages)
                    if result.held != args.messages:
                        result.error = f"{result.held} held of {args.messages} sent"
                except BenchError as err:
                    result.error = str(err)
                say(f"   {sessions:2d} sessions, {human(size):>6}: " + (
                    f"{result.rate:7.0f} msg/s ({result.seconds:.1f}s, other load "
                    f"{result.other_cpu:.2f} CPU)" if result.rate else
                    f"FAILED: {result.error}"))
        server.empty()
        problems = server.errors()
        if problems:
            say(f"   {server.name} logged {len(problems)} error line(s), first: {problems[0]}")
    except BenchError as err:
        say(f"   {server.name} not measured: {err}")
        for sessions in args.sessions:
            for size in args.sizes:
                if not any(r.server == server.name and r.sessions == sessions and r.size == size
                           for r in results):
                    results.append(Result(server.name, sessions, size, args.messages,
                                          error=str(err).splitlines()[0]))
    finally:
        server.stop()


# ---- output ---------------------------------------------------------------------------------

def human(size: int) -> str:
    return f"{size // 1024} KB" if size % 1024 == 0 else f"{size} B"


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)[bB]?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 10k, 102400)")
    return int(match[1]) * {"": 1, "k": 1024, "m": 1024 * 1024}[match[2].lower()]


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("values must be >= 1")
    return values


def receivers_list(text: str) -> list[int | str]:
    """--receivers: numbers >= 1, or "default" (the configuration says no ``workers``)."""
    try:
        values = [v if v == DEFAULT else int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers or {DEFAULT!r}: "
                                         f"{text!r}") from None
    if any(v != DEFAULT and v < 1 for v in values):
        raise argparse.ArgumentTypeError("values must be >= 1")
    return values


def backend_list(text: str) -> list[str]:
    values = [v.strip().lower() for v in text.split(",") if v.strip()]
    if not values or any(v not in VSL_BACKENDS for v in values):
        raise argparse.ArgumentTypeError(f"choose among {', '.join(VSL_BACKENDS)}")
    return values


def clean_up(work: Path, keep: bool) -> None:
    """Remove the work directory, or say where it is kept (--keep)."""
    if keep:
        say(f"kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def report(results: list[Result], args) -> None:
    print(f"\n{args.messages} messages per run, from smtp-source over loopback "
          f"(one connection per message); {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {postfix_version()}")
    print(f"{'server':{NAME_WIDTH}} {'sessions':>8} {'size':>7} {'msg/s':>7} {'seconds':>8} "
          f"{'server CPU':>11} {'client CPU':>11} {'other load':>10}")
    for r in results:
        if r.rate is None:
            print(f"{r.server:{NAME_WIDTH}} {r.sessions:8d} {human(r.size):>7}   "
                  f"failed: {r.error}")
            continue
        server_cpu = f"{r.server_cpu / r.messages * 1000:6.2f} ms/msg" if r.server_cpu else ""
        client_cpu = f"{r.client_cpu / r.messages * 1000:6.2f} ms/msg" if r.client_cpu else ""
        noisy = "  (!)" if r.other_cpu > args.noisy else ""
        print(f"{r.server:{NAME_WIDTH}} {r.sessions:8d} {human(r.size):>7} {r.rate:7.0f} "
              f"{r.seconds:8.1f} {server_cpu:>11} {client_cpu:>11} "
              f"{r.other_cpu:6.2f} CPU{noisy}")
    if any(r.rate and r.other_cpu > args.noisy for r in results):
        print(f"(!) other processes used more than {args.noisy} CPU during the run: "
              "the machine was not quiet, that rate is low")
    by = {(r.server, r.sessions, r.size): r.rate for r in results}
    names = list(dict.fromkeys(r.server for r in results))
    ratios = ratio_pairs(names)
    columns = [short(n) for n in names] + [f"{short(a)}/{short(b)}" for a, b in ratios]
    print(f"\n{'sessions':>8} {'size':>7} " + " ".join(f"{c:>7}" for c in columns))
    for sessions in args.sessions:
        for size in args.sizes:
            rates = {name: by.get((name, sessions, size)) for name in names}
            cells = [f"{rates[n]:.0f}" if rates[n] else "-" for n in names]
            cells += [f"{rates[a] / rates[b]:.2f}" if rates[a] and rates[b] else "-"
                      for a, b in ratios]
            print(f"{sessions:8d} {human(size):>7} " + " ".join(
                cell.rjust(max(7, len(column))) for cell, column in zip(cells, columns)))


def ratio_pairs(names: list[str]) -> list[tuple[str, str]]:
    """(numerator, denominator) of the ratios shown: every vSL column against Postfix and
    the sink, each broker column against the spool column with as many receivers, and
    each column against its --baseline twin."""
    vsls = [n for n in names if n.startswith("vSL")]
    pairs = [(n, other) for other in ("Postfix", "sink") if other in names for n in vsls]
    pairs += [(n, n + BASE_SUFFIX) for n in vsls if n + BASE_SUFFIX in names]
    return pairs + [(n, n.replace("rabbitmq", "spool")) for n in vsls
                    if "rabbitmq" in n and n.replace("rabbitmq", "spool") in names]


def short(name: str) -> str:
    """A server's name in the ratio table's headings ("vSL rabbitmq x2" -> "rabbitmq x2")."""
    return name.removeprefix("vSL ")


def postfix_version() -> str:
    try:
        out = subprocess.run(["/usr/sbin/postconf", "-d", "-h", "mail_version"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        return f"Postfix {out}" if out else "Postfix ?"
    except (OSError, subprocess.SubprocessError):
        return "no Postfix"


# ---- main -----------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=None,
                        help="messages per run (default 10000; 1000 with --quick)")
    parser.add_argument("--sessions", type=int_list, default=[4, 16],
                        help="parallel smtp-source sessions, comma-separated (default 4,16)")
    parser.add_argument("--sizes", type=lambda t: [parse_size(s) for s in t.split(",")],
                        default=[10 * 1024, 100 * 1024],
                        help="message payload sizes, comma-separated (default 10k,100k)")
    parser.add_argument("--servers", default="vsl,postfix,sink",
                        help="which servers, comma-separated (default vsl,postfix,sink)")
    parser.add_argument("--quick", action="store_true",
                        help="1,000 messages per run and a shorter warm-up and settle")
    parser.add_argument("--warmup", type=int, default=None,
                        help="messages sent after each server's start, not measured "
                             "(default 500; 100 with --quick)")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds of quiet before every run (default 3; 1 with --quick)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="bound on one smtp-source run, in seconds (default 1800)")
    parser.add_argument("--noisy", type=float, default=0.25,
                        help="flag runs during which everything else (other processes, "
                             "the kernel's I/O threads) used more CPUs' worth than this "
                             "(default 0.25)")
    parser.add_argument("--quiet-wait", type=float, default=120,
                        help="before every run, wait up to this many seconds for the "
                             "machine's other load to fall under --noisy (default 120)")
    parser.add_argument("--receivers", type=receivers_list, default=[DEFAULT],
                        help="vSL processes accepting mail ([server] workers), "
                             "comma-separated numbers or 'default' (no workers key: what "
                             "vsl serve does untuned): one vSL column each (default: default)")
    parser.add_argument("--event-loops", type=lambda t: t.split(","), default=["auto"],
                        help="vSL's [server] event_loop, comma-separated: auto, asyncio, "
                             "uvloop; one vSL column each (default auto)")
    parser.add_argument("--backend", type=backend_list, default=["spool"],
                        help="vSL's queue, comma-separated: spool, rabbitmq (a private "
                             "broker per column); one vSL column each (default spool)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout (with its .venv) serving a twin of each "
                             "vSL column, run just before it: before/after in one run")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (logs, configs)")
    args = parser.parse_args()
    args.messages = args.messages or (1000 if args.quick else 10_000)
    args.warmup = args.warmup if args.warmup is not None else (100 if args.quick else 500)
    args.settle = args.settle if args.settle is not None else (1.0 if args.quick else 3.0)
    if not Path(SMTP_SOURCE).exists():
        parser.error("smtp-source is missing (apt-get install postfix)")
    kinds = {"vsl": VslServer, "postfix": PostfixServer, "sink": SinkServer}
    wanted = [s.strip().lower() for s in args.servers.split(",") if s.strip()]
    if not wanted or any(s not in kinds for s in wanted):
        parser.error(f"--servers: choose among {', '.join(kinds)}")

    work = Path(tempfile.mkdtemp(prefix="vsl-throughput-", dir="/tmp"))
    work.chmod(0o755)  # Postfix's daemons (user postfix) reach their queue through it
    if args.baseline and not (args.baseline / ".venv" / "bin" / "vsl").exists():
        parser.error(f"--baseline: no {args.baseline / '.venv/bin/vsl'}")
    builds = [args.baseline, None] if args.baseline else [None]
    servers = [VSL_BACKENDS[backend](work, n, loop, build) for backend in args.backend
               for n in args.receivers for loop in args.event_loops
               for build in builds] if "vsl" in wanted else []
    servers += [kinds[k](work) for k in wanted if k != "vsl"]

    def stop_all() -> None:
        for server in servers:
            try:
                server.stop()
            except Exception as err:  # keep stopping the others
                say(f"stopping {server.name}: {err}")

    atexit.register(stop_all)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda number, _frame: sys.exit(128 + number))
    say(f"work directory: {work}")
    results: list[Result] = []
    try:
        for server in servers:
            bench_server(server, args, results)
    finally:
        stop_all()
        clean_up(work, args.keep)
    report(results, args)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
