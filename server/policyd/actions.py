"""A stage's decision as an access(5) action, the reply of a policy request.

    next                      DUNNO (the restriction list goes on)
    accept, faccept           OK (ends this restriction list: Postfix goes on with the next)
    deny(reply)               the reply as one line: ``550 5.7.1 text`` (4xx: a deferral)
    quarantine(name)          HOLD (the message waits in Postfix's hold queue)
    headers added (DATA)      PREPEND the first one; Postfix takes one action per request

A script's own 2xx text cannot be expressed (OK has none), nor a multi-line reply (its
lines are joined into one).
"""
from __future__ import annotations

import re

DUNNO, OK = "DUNNO", "OK"
# what an internal error answers: Postfix defers, unless something else rejects for good
TEMPORARY_FAILURE = "DEFER_IF_PERMIT Service temporarily unavailable"
# what a sender or recipient that is no address answers: its stages cannot run
BAD_ADDRESS = "DEFER_IF_PERMIT Address not understood by the policy service"
_REPLY_LINE = re.compile(r"^(\d{3})[ -]?(?:([245]\.\d{1,3}\.\d{1,3})(?: |$))?(.*)$")
_BREAKS = re.compile(r"[\r\n]+[ \t]*")


def refusal(reply: str) -> str:
    """A deny's reply as an action: ``550 5.7.1 text``; the lines of a multi-line reply
    become one (code and enhanced code of the first, every line's text)."""
    code = enhanced = None
    texts = []
    for line in reply.replace("\r\n", "\n").split("\n"):
        match = _REPLY_LINE.match(line)
        if match is None:  # status::deny checked the reply: never happens
            continue
        code, enhanced = code or match[1], enhanced or match[2]
        texts.append(match[3].strip())
    words = [code, enhanced, " ".join(t for t in texts if t)]
    return " ".join(w for w in words if w)


def is_refusal(action: str) -> bool:
    """Whether ``action`` refuses (a 4xx or 5xx reply, or a deferral)."""
    return action[:1] in ("4", "5") or action.startswith("DEFER")


def hold(queue: str) -> str:
    """quarantine(queue): Postfix's hold queue (the text is logged by Postfix)."""
    return f"HOLD quarantined by the policy ({queue})"


def prepend(name: str, value: str) -> str:
    """A header the script added: one line (a folded value is unfolded)."""
    return f"PREPEND {name}: {_BREAKS.sub(' ', value)}"

