"""The open-files limit (RLIMIT_NOFILE) a server process needs: a descriptor for every
connection ``limits.connections`` admits, and some for the rest (listeners, spool
files, DNS sockets, logs).

Most systems start a process with a soft limit of 1,024, kept low for select(), which
the event loop does not use (epoll), and a higher hard limit. Past the soft limit the
listener accepts no more and the spool can open no file (Errno 24), long before
``limits.connections``: so a server raises its soft limit to the hard one, as Go's
runtime does, and warns when even the hard one is too low. The hard limit stays the
operator's (systemd's ``LimitNOFILE=``, ``ulimit -Hn``).
"""
from __future__ import annotations

import logging
import resource

log = logging.getLogger("vsl.server")

RESERVE = 100  # descriptors besides the connections: listeners, spool, DNS, logs


def raise_open_files_limit(connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; warn if it still falls short of
    ``connections`` plus :data:`RESERVE`. Returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as err:  # a hard limit the kernel does not allow
            log.debug("RLIMIT_NOFILE stays %d: %s", soft, err)
    needed = connections + RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("open files: RLIMIT_NOFILE is %d, under the %d that limits.connections "
                    "(%d) and %d more need: connections past it are closed unanswered and "
                    "the spool fails (Errno 24); raise it (systemd: LimitNOFILE=)",
                    soft, needed, connections, RESERVE)
    return soft
