"""A slow destination beside other mail: how long local mail waits while one relay takes
its time, with delivery as it is (a message for a busy destination waits a second for a
session, then is put back: server/transports/pool.py BUSY_WAIT; concurrency 40, 20 to one
destination) and as it was before (it waited in its delivery slot until a session was free;
concurrency 20, 20 to one destination, so one destination could have every slot), in the
same run.

    python bench/slow_destination.py [--slow 40] [--local 20] [--delay 5] [--rounds 2]

The relay is an aiosmtpd sink on 127.0.0.1 (tests/support/mailsink.py) that answers each
message's end of DATA after --delay seconds; --slow messages for it are queued first, then
--local messages for a Maildir; one Delivery with the default [delivery] settings works
them off (the "before" way: the old defaults, and no BUSY_WAIT).
Reported per way and round: seconds until every local message is delivered, and until every
message is; and the ratio of the local wait, before / now.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support

from tests.support.mailsink import MESSAGE, Sink  # noqa: E402
from vsl.server.config import DeliveryConfig  # noqa: E402
from vsl.server.delivery import Delivery  # noqa: E402
from vsl.server.envelope import Envelope, RecipientState  # noqa: E402
from vsl.server.queue import Spool  # noqa: E402
from vsl.server.transports import pool  # noqa: E402

WAYS = ("before", "now")


async def one_round(way: str, slow: int, local: int, delay: float) -> tuple[float, float]:
    """Seconds until the local messages are delivered, and until all are."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spool, box = Spool(root / "queue"), root / "box"
        config = DeliveryConfig(maildir_root=root / "mail", poll_interval=0.05,
                                command_timeout=delay + 30)
        busy_wait = pool.BUSY_WAIT
        if way == "before":
            config = replace(config, concurrency=20, destination_concurrency=20)
            pool.BUSY_WAIT = None  # waits for a session as long as it takes
        try:
            async with Sink() as sink:
                sink.data_delay = delay
                relay = f"smtp://127.0.0.1:{sink.port}"
                for n in range(slow):
                    await queue(spool, relay, f"u{n}@remote.test")
                for n in range(local):
                    await queue(spool, f"maildir:{box}", f"l{n}@example.test")
                delivery = Delivery(spool, config, "mx.test", ("example.test",))
                started = time.monotonic()
                delivery.start()
                try:
                    await until(lambda: len(list(box.glob("new/*"))) >= local)
                    local_done = time.monotonic() - started
                    await until(lambda: len(sink.messages) >= slow)
                    all_done = time.monotonic() - started
                finally:
                    await delivery.stop()
        finally:
            pool.BUSY_WAIT = busy_wait
    return local_done, all_done


async def queue(spool: Spool, route: str, rcpt: str) -> None:
    await spool.put(Envelope("alice@example.test", [RecipientState(rcpt, route)]), MESSAGE,
                    "deliver")


async def until(done) -> None:
    while not done():
        await asyncio.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", type=int, default=40, help="messages for the slow relay")
    parser.add_argument("--local", type=int, default=20, help="messages for a Maildir")
    parser.add_argument("--delay", type=float, default=5.0,
                        help="seconds the relay takes per message (5)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per way (2)")
    args = parser.parse_args()
    results = {way: [] for way in WAYS}
    print(f"{args.slow} messages for a relay taking {args.delay:g} s each, then "
          f"{args.local} local; default [delivery] settings (before: the old ones)")
    print("way     round  local delivered after  all delivered after")
    for number in range(1, args.rounds + 1):
        for way in WAYS:  # alternating, so that a slow moment of the machine hits both
            local_done, all_done = asyncio.run(one_round(way, args.slow, args.local,
                                                         args.delay))
            results[way].append(local_done)
            print(f"{way:7} {number:5}  {local_done:18.2f} s  {all_done:17.2f} s")
    ratio = statistics.median(results["before"]) / statistics.median(results["now"])
    print(f"local mail's wait, before / now (medians): {ratio:.1f}")


if __name__ == "__main__":
    main()
