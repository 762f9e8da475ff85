"""A queued message's envelope, typed: the one definition the session (which writes it),
delivery (which updates it), DSNs and `vsl queue` (which read it) share, so a field one
side writes is the field the other reads.

    envelope = Envelope(sender="a@example.org", recipients=[RecipientState("b@example.net")])
    data = envelope.to_json()              # what the spool stores, with "version": VERSION
    envelope = Envelope.from_json(data)    # ValueError when it is not an envelope

Versions: an envelope without ``version`` was written before envelopes were typed
(version 0); it has the same fields, so it reads the same way. Version 2 adds each
recipient's ``reason`` and ``reason_confidence`` (why its last reply refused it, as the
bounce classifier judged); an envelope of version 0 or 1 reads with both None. A field a
reader does not know is ignored; a version newer than :data:`VERSION` is refused, not
misread (so a vSL older than version 2 refuses the envelopes a newer one wrote).

``context``: while a message waits in ``working``, what a worker elsewhere needs to run
on_post_queue for it (a JSON object, vsl.stdlib.support.handoff ``dump``); None
elsewhere, and in an envelope written before it existed.

``session``: the log id of the SMTP session that received the message (server/logids.py),
so delivery and DSN lines on any process carry it; "" in an envelope written before it
existed, and not stored when "" (older readers ignore it: the version stays).
"""
from __future__ import annotations

import functools
import json
import types
import typing
from dataclasses import dataclass, field

VERSION = 2

# pending -> delivered | deferred | failed; failed -> bounced once its DSN is queued
DONE = ("delivered", "bounced")  # nothing is left to do for such a recipient


@dataclass
class RecipientState:
    """One recipient of a queued message and what delivery made of it so far."""

    address: str
    route: str = "mx"
    status: str = "pending"       # pending, delivered, deferred, failed, bounced
    attempts: int = 0
    reply: str | None = None      # the last attempt's reply (or why there was none)
    remote_mta: str | None = None
    updated_at: float | None = None
    expired: bool = False         # failed because it was still deferred at max_age
    reason: str | None = None     # why the last reply refused it (bounce classifier), v2
    reason_confidence: float | None = None  # the classifier's confidence in it (0-1), v2

    def record_attempt(self, status: str, reply: str | None, remote_mta: str | None,
                       at: float, reason: str | None = None,
                       reason_confidence: float | None = None) -> None:
        """Note the outcome of one delivery attempt (and why it failed, when known)."""
        self.status, self.reply, self.remote_mta, self.updated_at = status, reply, remote_mta, at
        self.reason, self.reason_confidence = reason, reason_confidence
        self.attempts += 1

    @property
    def done(self) -> bool:
        """Delivered or bounced: nothing more happens to this recipient."""
        return self.status in DONE


@dataclass
class Envelope:
    """Sender, recipients and what is known of the client, as the spool stores them."""

    sender: str
    recipients: list[RecipientState] = field(default_factory=list)
    id: str | None = None               # set by the spool
    received_at: float | None = None    # set by the spool when missing
    helo: str | None = None
    client_ip: str | None = None
    client_port: int | None = None
    server_name: str | None = None
    transaction: str | None = None      # the session's message id (for the logs)
    authenticated_as: str | None = None
    tls: bool = False
    dsn_for: str | None = None          # a DSN: the id of the message it reports on
    attempts: int = 0                   # delivery attempts that left it deferred
    next_attempt: float | None = None
    delay_warned_at: float | None = None
    context: dict | None = None         # the session's hand-off, in working only
    session: str = ""                   # the log id of the SMTP session that received it

    def stored(self) -> dict:
        """The stored form, as a JSON object with ``version`` (and ``context`` and
        ``session`` only when there is one)."""
        stored = dict(vars(self), version=VERSION,
                      recipients=[dict(sorted(vars(rcpt).items())) for rcpt in self.recipients])
        if self.context is None:
            del stored["context"]
        if not self.session:
            del stored["session"]
        return dict(sorted(stored.items()))

    def to_json(self) -> bytes:
        """The stored form, as bytes: the keys sorted, but the context's kept in order
        (the order of a script's maps and of its stored values is theirs)."""
        return json.dumps(self.stored()).encode()  # no indent: the C encoder

    @classmethod
    def from_json(cls, data: bytes | str) -> Envelope:
        """An envelope read back from :meth:`to_json` (or from an unversioned one)."""
        stored = json.loads(data)
        if not isinstance(stored, dict):
            raise ValueError("an envelope is a JSON object")
        version = stored.get("version", 0)
        if not isinstance(version, int) or not 0 <= version <= VERSION:
            raise ValueError(f"envelope version {version!r} is not one this vSL reads "
                             f"(0 to {VERSION})")
        envelope = _typed(cls, stored)
        if not isinstance(envelope.recipients, list):
            raise ValueError("an envelope's recipients are a list")
        envelope.recipients = [_typed(RecipientState, rcpt) for rcpt in envelope.recipients]
        return envelope


def _typed(cls, stored):
    """An instance of dataclass ``cls`` from the JSON object ``stored`` (fields it does not
    know are ignored); ValueError when a field is missing or of the wrong type."""
    if not isinstance(stored, dict):
        raise ValueError(f"a {cls.__name__} is a JSON object")
    accepts = _json_types(cls)
    known = {}
    for name, value in stored.items():
        if name in accepts:
            if type(value) not in accepts[name]:
                raise ValueError(f"{cls.__name__}.{name}: {value!r} is not of the right type")
            known[name] = value
    try:
        return cls(**known)
    except TypeError as err:  # a required field is missing
        raise ValueError(f"{cls.__name__}: {err}") from None


@functools.cache
def _json_types(cls) -> dict[str, frozenset[type]]:
    """For each field of dataclass ``cls``, the types of the JSON values that may stand
    for it (exact types: JSON's true is no int)."""
    return {name: frozenset(json_type for arm in _arms(hint) for json_type in _json_of(arm))
            for name, hint in typing.get_type_hints(cls).items()}


def _arms(hint) -> tuple:
    return typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def _json_of(hint) -> tuple[type, ...]:
    return (int, float) if hint is float else (typing.get_origin(hint) or hint,)
