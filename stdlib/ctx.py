"""``ctx`` -- what a stage function sees of the SMTP session, and what it may change.

The server makes one :class:`Context` per connection and sets ``ctx.stage`` before
each stage function. Reading a property before its stage (``ctx.sender`` in
``on_helo``), or calling a method outside its stages, is a ScriptError scripts can
catch. Delivery makes one per refused recipient for ``on_delivery_failure``
(:meth:`Context.delivery_failure`): the queued message's sender, queue id and headers,
the recipient, the remote's reply and the classifier's verdict, read-only::

    ctx = Context("192.0.2.1", 4242, "192.0.2.25", 25, "mx.example")
    ctx.stage, ctx.helo = Stage.HELO, "client.example"
    ctx.begin_transaction(Mailbox.parse(mail_from_arg))    # MAIL FROM
    ctx.add_recipient(Mailbox.parse(rcpt_to_arg))          # RCPT TO (drop_recipient() if refused)
    ctx.message = Message(data)                            # end of DATA, before on_pre_queue
    ctx.all_recipients(), ctx.sender, ctx.message.to_bytes(), ctx.stored()
    ctx.route_for(mailbox)                                 # transport::'s route, or None
    ctx.reset()                                            # RSET, or after on_post_queue
"""
from __future__ import annotations

import functools
import uuid
from enum import IntEnum

from vsl.checks import EntryPoints
from vsl.errors import ScriptError
from vsl.natives import Namespace
from vsl.values import FrozenMap, NativeObject, method, preview

from .support.mail import Mailbox, Message
from .support.result import BounceResult, CheckResult

namespace = Namespace("ctx", "The SMTP session object passed to stage functions")


class Stage(IntEnum):
    """The SMTP stages in order; at each one the server calls the script's ``on_<stage>``."""

    CONNECT = 1
    HELO = 2
    AUTH = 3
    MAIL_FROM = 4
    RCPT_TO = 5
    PRE_QUEUE = 6
    POST_QUEUE = 7
    DELIVERY_FAILURE = 8  # called by delivery, for a recipient a remote refused

    @property
    def function(self) -> str:
        """The script function called at this stage (``on_mail_from``)."""
        return f"on_{self.name.lower()}"


_SESSION = (Stage.CONNECT, Stage.POST_QUEUE)
_TRANSACTION = (Stage.MAIL_FROM, Stage.POST_QUEUE)
_MESSAGE = (Stage.PRE_QUEUE, Stage.POST_QUEUE)
_HEADERS = (Stage.PRE_QUEUE, Stage.DELIVERY_FAILURE)  # delivery reads the queued message's
_QUEUED = (Stage.MAIL_FROM, Stage.DELIVERY_FAILURE)   # the envelope delivery knows
_DELIVERY = (Stage.DELIVERY_FAILURE, Stage.DELIVERY_FAILURE)
_ENVELOPE_EDIT = (Stage.MAIL_FROM, Stage.PRE_QUEUE)  # after that the message is queued
_MESSAGE_EDIT = (Stage.PRE_QUEUE, Stage.PRE_QUEUE)

_PROPS = {  # property -> the first and last stage where scripts can read it
    "client_ip": _SESSION, "client_port": _SESSION, "server_ip": _SESSION,
    "server_port": _SESSION, "server_name": _SESSION, "auth": _SESSION,
    "helo": (Stage.HELO, Stage.POST_QUEUE),
    "improper_pipelining": (Stage.CONNECT, Stage.PRE_QUEUE),
    "sender": _QUEUED, "message_id": _QUEUED, "recipients": _TRANSACTION,
    "rcpt": (Stage.RCPT_TO, Stage.RCPT_TO),
    "body": _MESSAGE,
    "recipient": _DELIVERY, "reply": _DELIVERY, "bounce": _DELIVERY, "attempt": _DELIVERY,
    "age": _DELIVERY,
}
_METHODS: dict[str, tuple[Stage, Stage]] = {}  # method -> its stages (filled by @_during)
_NO_VALUE = object()


def _during(stages: tuple[Stage, Stage]):
    """A script method of Context that only works from ``stages[0]`` to ``stages[1]``."""
    def mark(fn):
        label = f"ctx.{fn.__name__}()"
        _METHODS[fn.__name__] = stages

        @functools.wraps(fn)
        def checked(self, *args):
            self._check_stage(stages, label)
            return fn(self, *args)
        return method()(checked)
    return mark


class Reply(CheckResult):
    """A remote's reply as on_delivery_failure sees it (``ctx.reply``): ``.code`` (550),
    ``.text`` (the rest); prints as the whole line and compares equal to it."""

    vsl_type = "reply"
    vsl_props = frozenset({"code", "text"})

    def __init__(self, line: str):
        code, _, text = line.partition(" ")
        self.value = line
        self.code = int(code) if len(code) == 3 and code.isdigit() else 0
        self.text = text if self.code else line


class Context(NativeObject):
    """One SMTP session (and its current transaction) as scripts see it, or in
    on_delivery_failure a queued message's refused recipient."""

    vsl_type = "ctx"
    vsl_props = frozenset(_PROPS)

    def __init__(self, client_ip: str, client_port: int, server_ip: str, server_port: int,
                 server_name: str):
        self.client_ip, self.client_port = client_ip, client_port
        self.server_ip, self.server_port, self.server_name = server_ip, server_port, server_name
        self.stage = Stage.CONNECT
        self.helo: str | None = None
        self.tls = False  # set once STARTTLS succeeded
        # set for the rest of the session once the client sent commands ahead of their
        # replies where RFC 2920 forbids it (Postfix's reject_unauth_pipelining)
        self.improper_pipelining = False
        self.auth: FrozenMap | None = None
        self._data: dict = {}  # store(): the session's values, then the transaction's
        self._session_data: dict = {}  # the session's values, while a transaction is open
        self.message_id: str | None = None
        # on_delivery_failure's (see delivery_failure())
        self.recipient: Mailbox | None = None
        self.reply: Reply | None = None
        self.bounce: BounceResult | None = None
        self.attempt = self.age = 0
        self.reset()

    @classmethod
    def delivery_failure(cls, *, queue_id: str, sender: Mailbox, recipient: Mailbox,
                         message: Message, reply: str, bounce: BounceResult, attempt: int,
                         age: int) -> Context:
        """The ctx of on_delivery_failure: a queued message (``queue_id``, ``sender``, its
        headers) whose ``recipient`` a remote refused with ``reply``, judged ``bounce``
        (a bounce::classify result), at its ``attempt``-th try, ``age`` seconds after it
        was queued."""
        ctx = cls("", 0, "", 0, "")
        ctx.stage, ctx.message_id, ctx.sender, ctx.message = \
            Stage.DELIVERY_FAILURE, queue_id, sender, message
        ctx.recipient, ctx.reply, ctx.bounce = recipient, Reply(reply), bounce
        ctx.attempt, ctx.age = attempt, age
        return ctx

    # -- Python API, for the server ------------------------------------------------
    def set_auth(self, mechanism: str, authid: str) -> None:
        """The client authenticated (before on_auth); ``ctx.auth = None`` forgets it."""
        self.auth = FrozenMap(mechanism=mechanism, authid=authid)

    def begin_transaction(self, sender: Mailbox, message_id: str | None = None) -> None:
        """MAIL FROM: a new transaction (ending any open one) with a new ``message_id``
        (the server gives its queue id; a random one otherwise)."""
        self.reset()
        self._session_data = dict(self._data)
        self.sender, self.message_id = sender, message_id or uuid.uuid4().hex

    def add_recipient(self, mailbox: Mailbox) -> None:
        """RCPT TO, before on_rcpt_to: the current ``rcpt``, added to the recipients once."""
        self.rcpt = mailbox
        if mailbox not in self.recipients:
            self.recipients.append(mailbox)

    def drop_recipient(self) -> None:
        """on_rcpt_to refused the current recipient: take it back out."""
        self.recipients = [r for r in self.recipients if r is not self.rcpt]

    def all_recipients(self) -> list[Mailbox]:
        """Where the message goes: the recipients, then the hidden ones added by bcc()."""
        return self.recipients + [b for b in self.bcc_recipients if b not in self.recipients]

    def stored(self) -> dict:
        """What scripts stored (store()), by key."""
        return dict(self._data)

    def reset(self) -> None:
        """End the transaction (RSET, or after on_post_queue): forget the envelope, the
        message and the values stored since MAIL FROM; those stored before it stay."""
        if self.message_id is not None:
            self._data = self._session_data
        self.sender: Mailbox | None = None
        self.rcpt: Mailbox | None = None
        self.message: Message | None = None
        self.message_id = None
        self.recipients: list[Mailbox] = []
        self.bcc_recipients: list[Mailbox] = []
        self.routes: dict[Mailbox, str] = {}  # transport::, per recipient
        self.route_all: str | None = None     # transport:: for every other recipient

    def set_route(self, route: str, rcpt=None) -> None:
        """transport::: route ``rcpt``; without one, ctx.rcpt in on_rcpt_to, else every
        recipient (forgetting earlier per-recipient routes). The last call wins."""
        self._check_stage(_TRANSACTION, "transport::")
        if rcpt is None and self.stage == Stage.RCPT_TO:
            rcpt = self.rcpt
        if rcpt is None:
            self.routes.clear()
            self.route_all = route
        else:
            self.routes[_recipient(rcpt)] = route

    def route_for(self, mailbox: Mailbox) -> str | None:
        """The route transport:: chose for a recipient (None: the server's default)."""
        return self.routes.get(mailbox, self.route_all)

    @property
    def body(self) -> str:
        """The message body as text."""
        return self._message().body

    # -- what scripts see ----------------------------------------------------------
    def vsl_get(self, name: str):
        stages = _PROPS.get(name)
        if stages is None:
            return super().vsl_get(name)
        self._check_stage(stages, "ctx.", name)
        value = getattr(self, name)
        return tuple(value) if type(value) is list else value  # scripts cannot push into it

    def _check_stage(self, stages: tuple[Stage, Stage], what: str, name: str = "") -> None:
        """A ScriptError naming ``what`` + ``name`` unless the current stage is within
        ``stages`` (the text is only built then: property reads call this every time)."""
        first, last = stages
        if self.stage < first:
            raise ScriptError(f"{what}{name} is not available before {first.function}")
        if self.stage > last:
            raise ScriptError(f"{what}{name} is not available after {last.function}")

    def _message(self) -> Message:
        if self.message is None:
            raise ScriptError("no message has been received")
        return self.message

    @_during(_SESSION)
    def is_secured(self) -> bool:
        """Whether the connection is encrypted (STARTTLS or implicit TLS)."""
        return self.tls

    @_during(_SESSION)
    def is_authenticated(self) -> bool:
        """Whether the client authenticated (AUTH)."""
        return self.auth is not None

    # -- headers ---------------------------------------------------------------------
    @_during(_HEADERS)
    def get_header(self, name) -> str:
        """The first value of a header, "" when there is none."""
        value = self._message().get(name)
        return "" if value is None else value

    @_during(_HEADERS)
    def get_all_headers(self, name=None) -> list:
        """Without a name, every header as "Name: value"; with one, all its values."""
        if name is None:
            return [f"{field}: {value}" for field, value in self._message().fields()]
        return self._message().get_all(name)

    @_during(_HEADERS)
    def has_header(self, name) -> bool:
        """Whether the message has a header of that name (names are case-insensitive)."""
        return self._message().get(name) is not None

    @_during(_HEADERS)
    def count_header(self, name) -> int:
        """How many headers of that name the message has."""
        return len(self._message().get_all(name))

    @_during(_MESSAGE_EDIT)
    def append_header(self, name, value) -> None:
        """Add a header after the others (a line break must be followed by a space)."""
        self._message().append(name, value)

    @_during(_MESSAGE_EDIT)
    def prepend_header(self, name, value) -> None:
        """Add a header before the others (a line break must be followed by a space)."""
        self._message().prepend(name, value)

    @_during(_MESSAGE_EDIT)
    def set_header(self, name, value) -> None:
        """Replace the first header of that name, or append one."""
        self._message().set(name, value)

    @_during(_MESSAGE_EDIT)
    def rename_header(self, old, new) -> bool:
        """Rename every header called ``old``; whether there was one."""
        return self._message().rename(old, new)

    @_during(_MESSAGE_EDIT)
    def remove_header(self, name) -> bool:
        """Remove every header of that name; whether there was one."""
        return self._message().remove(name)

    # -- envelope --------------------------------------------------------------------
    @_during(_ENVELOPE_EDIT)
    def rewrite_mail_from(self, address) -> None:
        """Replace the sender ("" is the null sender)."""
        self.sender = _mailbox(address)

    @_during(_ENVELOPE_EDIT)
    def rewrite_rcpt(self, old, new) -> bool:
        """Replace a recipient, in place; whether ``old`` was one."""
        old, new = _recipient(old), _recipient(new)
        if old not in self.recipients:
            return False
        index = self.recipients.index(old)
        del self.recipients[index]
        if new not in self.recipients:
            self.recipients.insert(index, new)
        if self.rcpt == old:
            self.rcpt = new
        return True

    @_during(_ENVELOPE_EDIT)
    def add_rcpt(self, address) -> bool:
        """Add a recipient; false if it already is one."""
        mailbox = _recipient(address)
        if mailbox in self.recipients:
            return False
        self.recipients.append(mailbox)
        return True

    @_during(_ENVELOPE_EDIT)
    def remove_rcpt(self, address) -> bool:
        """Remove a recipient; whether it was one."""
        mailbox = _recipient(address)
        if mailbox not in self.recipients:
            return False
        self.recipients.remove(mailbox)
        return True

    @_during(_ENVELOPE_EDIT)
    def bcc(self, address) -> bool:
        """Also deliver to ``address``, which ctx.recipients does not show; false if it
        already gets the message."""
        mailbox = _recipient(address)
        if mailbox in self.all_recipients():
            return False
        self.bcc_recipients.append(mailbox)
        return True

    # -- values kept for later stages --------------------------------------------------
    @method()
    def store(self, key, value=_NO_VALUE) -> None:
        """store(key, value), or store(result) keyed by its auth_key or mechanism_name."""
        if value is _NO_VALUE:
            key, value = _result_key(key), key
        self._data[_store_key(key)] = value

    @method()
    def get(self, key):
        """A stored value, () when there is none."""
        return self._data.get(_store_key(key))


namespace.register_type(Context)
namespace.register_type(Mailbox)
namespace.register_type(Reply)


def entry_points() -> EntryPoints:
    """The stages as ``vsl lint`` checks them: names, what ctx offers when, what they return
    (the language knows no SMTP; the CLI and the server pass this to the linter)."""
    from .status import Status

    names = tuple(stage.function for stage in Stage)
    return EntryPoints(
        names=names, prefix="on_", param=Context, returns=Status,
        available={member: (first - 1, last - 1)
                   for member, (first, last) in {**_PROPS, **_METHODS}.items()},
        member_types={"sender": Mailbox, "rcpt": Mailbox, "recipient": Mailbox,
                      "reply": Reply, "bounce": BounceResult},
        aliases={"on_data": "on_pre_queue", "on_ehlo": "on_helo", "on_rcpt": "on_rcpt_to",
                 "on_mail": "on_mail_from", "on_queue": "on_pre_queue",
                 "client_addr": "client_ip", "server_addr": "server_ip",
                 "mail_from": "sender", "rcpt_to": "rcpt", "rcpt_list": "recipients",
                 "on_deferred": "on_delivery_failure", "on_bounce": "on_delivery_failure"},
        return_hint="status::next(), status::accept(), status::deny(\"550 ...\") or "
                    "status::quarantine(name)",
        foreign_scripts=(".rhai",),  # vSMTP's
        kind="stage")


def _mailbox(address) -> Mailbox:
    return address if isinstance(address, Mailbox) else Mailbox.parse(address)


def _recipient(address) -> Mailbox:
    mailbox = _mailbox(address)
    if mailbox.is_null():
        raise ScriptError("a recipient cannot be the null address <>")
    return mailbox


def _store_key(key) -> str:
    if type(key) is not str or not key:
        raise ScriptError(f"a store key must be a non-empty string, not {preview(key)}")
    return key


def _result_key(result) -> str:
    """The key of a result object: its auth_key (spf_helo, ...) or its mechanism_name."""
    key = None
    if isinstance(result, NativeObject):
        key = getattr(result, "auth_key", None) or getattr(result, "mechanism_name", None)
    if type(key) is not str:
        raise ScriptError(f"store({preview(result)}) needs a result (with an auth_key or a "
                          "mechanism_name); use store(key, value) for other values")
    return key
