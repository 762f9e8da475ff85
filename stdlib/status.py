"""``status::`` -- what a stage function returns: next, accept, faccept, deny, quarantine.

A reply string is checked when the status is made (and by ``vsl lint`` when it
is a literal): ``"550 5.7.23 text"``, where the enhanced code's class matches
the reply code's first digit; several lines may be joined with ``\\n``.
"""
from __future__ import annotations

import re

from vsl.errors import Pos, ScriptError
from vsl.natives import Namespace, caller_position
from vsl.resolve import DYNAMIC
from vsl.values import NativeObject

namespace = Namespace("status", "Stage results")

_LINE = re.compile(r"^([2-5])(\d\d)(?:([ -])(?:([245])\.(\d{1,3})\.(\d{1,3})(?: |$))?(.*))?$")
DEFAULT_DENY = "554 5.7.1 Transaction rejected by policy"
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # all but the \n between lines
# A quarantine's name is one directory of the spool (quarantine/<name>): never '.' or '..',
# never hidden, within any file system's name limit. The spool checks names with this too.
_QUARANTINE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


def is_quarantine_name(name) -> bool:
    """Whether ``name`` may name a quarantine (status::quarantine, `vsl queue move`)."""
    return isinstance(name, str) and _QUARANTINE_NAME.fullmatch(name) is not None


def reply_problem(text, classes: str) -> str | None:
    """Why ``text`` is not a valid SMTP reply of one of ``classes`` ("2", "45"), or None."""
    if not isinstance(text, str):
        return f"the reply must be a string such as '{classes[-1]}50 ...'"
    lines = text.replace("\r\n", "\n").split("\n")
    code = None
    for line in lines:
        m = _LINE.match(line)
        if not m:
            return f"'{line}' is not an SMTP reply (expected 'NXX [X.Y.Z] text')"
        if m.group(1) not in classes:
            wanted = " or ".join(f"{c}xx" for c in classes)
            return f"reply code {m.group(1)}{m.group(2)} is not {wanted}"
        if code is not None and m.group(1) + m.group(2) != code:
            return "every line of a multi-line reply must have the same code"
        code = m.group(1) + m.group(2)
        if m.group(4) and m.group(4) != m.group(1):
            return (f"enhanced status {m.group(4)}.{m.group(5)}.{m.group(6)} does not match "
                    f"reply code {code} (class {m.group(1)})")
    return None


class Status(NativeObject):
    """The result of a stage function. ``origin``, for the host only: where the script
    made a deny or quarantine (the server logs it as who decided)."""

    vsl_type = "status"
    vsl_props = frozenset({"kind", "reply", "queue"})

    def __init__(self, kind: str, reply: str | None = None, queue: str | None = None,
                 origin: Pos | None = None):
        self.__dict__.update(kind=kind, reply=reply, queue=queue, origin=origin)

    def __setattr__(self, name, value):
        raise AttributeError("a Status cannot change (one status may be shared)")

    def vsl_display(self) -> str:
        arg = self.queue or self.reply
        return f"{self.kind}({arg})" if arg else f"{self.kind}()"

    def vsl_equals(self, other) -> bool:
        return isinstance(other, Status) and (self.kind, self.reply, self.queue) == (
            other.kind, other.reply, other.queue)


namespace.register_type(Status)

# Statuses without a reply of their own are shared: nothing changes a Status once made
# (scripts only read its properties), and a stage returns one on every call. A refusal
# is made anew, with its origin.
_NEXT, _ACCEPT, _FACCEPT = Status("next"), Status("accept"), Status("faccept")


def _checked(reply, classes: str) -> str | None:
    if reply is None:
        return None
    problem = reply_problem(reply, classes)
    if problem:
        raise ScriptError(f"invalid reply: {problem}")
    # a control character (from a HELO, an SPF explanation... the script put in) would
    # reach the client as it is: a CR ends a line for some; '?' as Postfix's printable()
    return _CONTROL.sub("?", reply.replace("\r\n", "\n"))


def _lint_reply(classes: str):
    def check(args):
        if args and args[0] is not DYNAMIC:
            return reply_problem(args[0], classes)
        return None
    return check


@namespace.native(name="next")
def next_() -> Status:
    """Go on with the default reply."""
    return _NEXT


@namespace.native(check=_lint_reply("2"))
def accept(reply=None) -> Status:
    """Accept this stage (optionally with a custom 2xx reply)."""
    return _ACCEPT if reply is None else Status("accept", _checked(reply, "2"))


@namespace.native(check=_lint_reply("2"))
def faccept(reply=None) -> Status:
    """Accept and skip every later stage."""
    return _FACCEPT if reply is None else Status("faccept", _checked(reply, "2"))


@namespace.native(check=_lint_reply("45"))
def deny(reply=None) -> Status:
    """Refuse (default 554 5.7.1); a 4xx reply makes it a temporary failure. Control
    characters in a reply (from text a client or a DNS record gave) become '?'."""
    return Status("deny", _checked(reply, "45") or DEFAULT_DENY, origin=caller_position())


@namespace.native
def quarantine(queue) -> Status:
    """Answer success, skip the later stages and keep the message in ``quarantine/<queue>``
    of the spool; ``queue``: 1 to 64 letters, digits, ``_``, ``-`` or ``.`` (not first)."""
    if not is_quarantine_name(queue):
        raise ScriptError("quarantine needs a queue name of 1 to 64 letters, digits, '_', '-' "
                          "or '.' (not first)")
    return Status("quarantine", queue=queue, origin=caller_position())
