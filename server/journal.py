"""The delivery journal: recipients a remote server has accepted, one line each, written
the moment its reply is read, before the envelope that records it is durable.

An envelope update waits for the spool's group commit (a few milliseconds under load);
a crash inside that window would send those recipients again at the next start. One
``write`` to a file opened for appending survives the process being killed (the kernel
holds it), so the next start reads the journal, marks those recipients delivered, and
empties it. A power loss can still lose the last lines: then a recipient is delivered
twice, never lost.

The spool (server/queue.py) owns it: ``Spool.update(entry, delivered=[...])`` does

    journal.record(msg_id, ["bob@example.test"])   # after the remote's 2xx
    ... the envelope's group commit ...            # the envelope now says "delivered"
    journal.settled()                              # may compact the file

and ``Spool.recover_deliveries`` replays it when delivery starts.

A line the next start cannot apply (its envelope is unreadable) is kept: :meth:`keep`
rewrites the journal with those lines only, every later compaction keeps them, and
delivery applies them once the envelope reads again (:meth:`forget` then drops them).
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from .files import write_all


class Journal:
    """An append-only file of ``<message id> <address>`` lines (see the module docstring)."""

    def __init__(self, path: Path, compact_at: int = 1 << 20):
        self.path = path
        self.compact_at = compact_at
        self.unsettled = 0  # recorded lines whose envelope update has not finished
        self.kept: dict[str, set[str]] = {}  # not yet in an envelope (see retain)
        self._kept_size = 0  # bytes of the kept lines at the last rewrite
        self._fd: int | None = None

    def read(self) -> dict[str, set[str]]:
        """What an earlier run recorded: message id -> delivered addresses."""
        delivered: dict[str, set[str]] = defaultdict(set)
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return {}
        for line in text.splitlines():
            msg_id, sep, address = line.partition(" ")
            if sep and address:  # a line torn by the crash has no address: skipped
                delivered[msg_id].add(address)
        return dict(delivered)

    def record(self, msg_id: str, addresses: list[str]) -> bool:
        """Note ``addresses`` of ``msg_id`` as delivered, in one write; False when there
        is nothing to note (then :meth:`settled` is not due)."""
        if not addresses:
            return False
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(self._fd, "".join(f"{msg_id} {a}\n" for a in addresses).encode())
        self.unsettled += 1
        return True

    def settled(self) -> None:
        """One recorded write is now in its envelope; with none left unsettled, a large
        journal is compacted to its kept lines."""
        self.unsettled -= 1
        if self.unsettled == 0 and self._fd is not None and \
                os.fstat(self._fd).st_size >= self.compact_at + self._kept_size:
            self._rewrite()

    def keep(self, entries: dict[str, set[str]]) -> None:
        """Rewrite the journal with only ``entries`` (every other line is in its
        envelope); they outlive every compaction until :meth:`forget`."""
        self.kept = entries
        self._rewrite()

    def retain(self, msg_id: str, addresses: set[str]) -> None:
        """Recorded addresses whose envelope update failed: kept like those a start could
        not apply, until the message's next claim applies them (or the next start)."""
        self.kept.setdefault(msg_id, set()).update(addresses)

    def forget(self, msg_id: str) -> None:
        """``msg_id``'s kept lines are in its envelope now: the next compaction drops
        them."""
        self.kept.pop(msg_id, None)

    def _rewrite(self) -> None:
        """The journal reduced to the kept lines: emptied, or replaced atomically (a
        crash leaves the old journal or the new one, never a part of either)."""
        content = "".join(f"{msg_id} {a}\n" for msg_id, addresses in sorted(self.kept.items())
                          for a in sorted(addresses)).encode()
        self._kept_size = len(content)
        if not content:
            if self._fd is not None:
                os.ftruncate(self._fd, 0)
            else:
                self.path.unlink(missing_ok=True)
            return
        fresh = self.path.with_name(self.path.name + ".new")
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write_all(fd, content)
        finally:
            os.close(fd)
        os.replace(fresh, self.path)
        self.close()  # the next record() appends to the new file

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
