"""The session's hand-off to a worker: what ``on_post_queue`` reads of a ``ctx`` that the
queued envelope and message do not hold, as JSON, and the ctx rebuilt from it.

    data = dump(ctx)                         # the receiver, after on_pre_queue
    ctx = load(data, message_bytes)          # a worker, elsewhere: ctx at Stage.POST_QUEUE

Design. ``dump`` writes a versioned JSON object (``"v": 1``) of the session (addresses,
HELO, TLS, AUTH), the transaction (sender, recipients, the bcc ones, transport::'s
routes) and every value ``ctx.store()`` holds, each with its type kept exactly:

- ``null``, booleans, strings, integers and finite floats stand for themselves (JSON tells
  ``1`` from ``1.0``); a list (an array) is a JSON array.
- Everything else is ``{"t": tag, "v": ...}``: ``f64`` (inf, -inf, nan), ``const_array``
  (a tuple), ``map`` and ``const_map`` (keys in order), ``range``, ``mailbox`` (its
  address), ``ref`` (see below), and one tag per result type of :data:`_OBJECTS` (its
  attributes, by name). A Resolver, a DkimKey, a closure, a Status or anything else
  raises :class:`HandoffError` naming the store key: a value is never dropped.
- Arrays and maps are numbered in the order they are first met; meeting one again
  writes ``{"t": "ref", "v": n}``. Scripts share arrays (``[a, a]``), so without this a
  few lines of script would make an exponentially large hand-off; with it the size is
  that of what the script stored, and the shared parts stay shared.

Size: what the script stored (each array and map once), plus the session's few fields;
the message itself is not in it. Strings are written each time they are met, and
scripts share them too (an array of 100,000 times one string of 1,000,000 characters is
within the default limits), so their characters, map keys included, add up to at most
:data:`MAX_TEXT`.

``load`` trusts nothing: a wrong version, a missing or extra key, a wrong type or an
unknown tag raises :class:`HandoffError` saying where (a worker dead-letters such a
message). It parses the message in the caller's thread: a worker loads a big one in a
thread of its own, as the session parses it.
"""
from __future__ import annotations

import math
from typing import Callable

from vsl.errors import ScriptError
from vsl.values import I64_MAX, I64_MIN, MAX_NESTING, FrozenMap, type_name

from ..arc import ArcResult
from ..ctx import Context, Stage
from ..dkim import DkimResult, Signature
from ..dmarc import DmarcResult
from ..dnsbl import DnsblResult, DnsblScore
from ..greylist import GreylistResult
from ..iprev import IprevResult
from ..limit import LimitResult
from ..spf import SpfResult
from .mail import AddressError, HeaderLimitError, HeaderLimits, Mailbox, Message
from .result import BounceResult

FORMAT = 1
MAX_TEXT = 32 * 1024 * 1024  # characters of the strings in a hand-off


class HandoffError(Exception):
    """A ctx that cannot be handed to a worker, or a hand-off that cannot be loaded."""


# ---- what a result type's attributes may hold -----------------------------------------

Check = Callable[[object], bool]


def _of(*types: type) -> Check:
    """A value of exactly one of ``types`` (``bool`` is not an ``int`` here)."""
    return lambda value: type(value) in types


def _all(container: type, item: type) -> Check:
    """A ``container`` of values of exactly type ``item``."""
    return lambda value: type(value) is container and all(type(x) is item for x in value)


_STR, _INT, _BOOL, _NUMBER = _of(str), _of(int), _of(bool), _of(int, float)
_OPTIONAL_STR = _of(str, type(None))
_STRINGS, _MAPS = _all(tuple, str), _all(tuple, FrozenMap)
_RESULT_FIELDS = {"value": _STR}

# tag -> (class, attribute -> check): every attribute of an object of the class (its
# vars(), private ones too: tests/test_handoff.py checks that none is missed)
_OBJECTS: dict[str, tuple[type, dict[str, Check]]] = {
    "spf_result": (SpfResult, {
        **_RESULT_FIELDS, "identity": _STR, "domain": _STR, "client_ip": _STR, "helo": _STR,
        "sender": _STR, "explanation": _STR, "mechanism": _STR}),
    "iprev_result": (IprevResult, {**_RESULT_FIELDS, "ip": _STR, "fqdn": _OPTIONAL_STR}),
    "dkim_result": (DkimResult, {
        **_RESULT_FIELDS, "checks": _all(list, Signature), "signatures": _MAPS}),
    "dmarc_result": (DmarcResult, {
        **_RESULT_FIELDS, "domain": _STR, "policy": _STR, "reason": _STR,
        "spf_aligned": _BOOL, "dkim_aligned": _BOOL, "spf": _of(SpfResult, type(None)),
        "dkim": _of(DkimResult, type(None))}),
    "arc_result": (ArcResult, {
        **_RESULT_FIELDS, "instances": _INT, "domain": _STR, "reason": _STR}),
    "dnsbl_result": (DnsblResult, {
        **_RESULT_FIELDS, "subject": _STR, "listed": _BOOL, "zone": _OPTIONAL_STR,
        "codes": _STRINGS, "reason": _OPTIONAL_STR}),
    "dnsbl_score": (DnsblScore, {
        **_RESULT_FIELDS, "subject": _STR, "listed": _BOOL, "zone": _OPTIONAL_STR,
        "codes": _STRINGS, "reason": _OPTIONAL_STR, "score": _NUMBER, "results": _MAPS}),
    "greylist_result": (GreylistResult, {**_RESULT_FIELDS, "retry_in": _INT}),
    "limit_result": (LimitResult, {
        **_RESULT_FIELDS, "allowed": _BOOL, "remaining": _INT, "retry_in": _INT}),
    "bounce_result": (BounceResult, {
        **_RESULT_FIELDS, "reason": _STR, "confidence": _NUMBER, "hard": _BOOL,
        "status": _STR, "diagnostic": _STR}),
}
_PARTS = {  # the same, for what only stands inside a result (not a script value)
    "dkim_signature": (Signature, {
        "domain": _STR, "selector": _STR, "algorithm": _STR, "identity": _STR,
        "result": _STR, "reason": _STR}),
}
_KNOWN = {**_OBJECTS, **_PARTS}
_TAGS = {cls: tag for tag, (cls, _) in _KNOWN.items()}
_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
_CONTAINERS = {"array": list, "const_array": list, "map": dict, "const_map": dict}  # JSON


# ---- dump ------------------------------------------------------------------------------

class _Uncarriable(Exception):
    """A value the encoder has no form for (its type name is the message)."""


class _Encoder:
    """Script values to JSON values, numbering arrays and maps to write shared ones once."""

    def __init__(self):
        self.seen: dict[int, int] = {}  # id of an array or map -> its number
        self.text_left = MAX_TEXT

    def value(self, v, depth: int = 0):
        t = type(v)
        if t is str:
            return self._text(v)
        if depth > MAX_NESTING:  # as deep as values.display() goes
            raise _Uncarriable(f"value nested more than {MAX_NESTING} levels deep")
        if v is None or t in (bool, int):
            return v
        if t is float:
            return v if math.isfinite(v) else {"t": "f64", "v": str(v)}
        if t is Mailbox:
            return {"t": "mailbox", "v": v.address}
        if t is range:
            return {"t": "range", "v": [v.start, v.stop, v.step]}
        if t in (list, tuple, dict, FrozenMap):
            return self._container(v, depth)
        tag = _TAGS.get(t)
        if tag is None:
            name = type_name(v)
            raise _Uncarriable(t.__name__ if name == "unknown" else name)
        return {"t": tag, "v": {name: self.value(getattr(v, name), depth + 1)
                                for name in _KNOWN[tag][1]}}

    def _text(self, text: str) -> str:
        self.text_left -= len(text)
        if self.text_left < 0:
            raise _Uncarriable(f"value whose strings add up to more than {MAX_TEXT} "
                               "characters")
        return text

    def _container(self, v, depth: int):
        """An array or map, or its number if it was met before (loops, not comprehensions:
        one Python frame less per level)."""
        number = self.seen.get(id(v))
        if number is not None:
            return {"t": "ref", "v": number}
        self.seen[id(v)] = len(self.seen)
        if type(v) in (list, tuple):
            items = []
            for x in v:
                items.append(self.value(x, depth + 1))
            return items if type(v) is list else {"t": "const_array", "v": items}
        entries = {}
        for k, x in v.items():
            entries[self._text(k)] = self.value(x, depth + 1)
        return {"t": "map" if type(v) is dict else "const_map", "v": entries}


def dump(ctx: Context) -> dict:
    """What on_post_queue can read of ``ctx`` but its message (whose bytes travel beside
    it), JSON-safe. Raises HandoffError naming the store key of a value it cannot carry."""
    encoder = _Encoder()
    return {
        "v": FORMAT,
        "client_ip": ctx.client_ip, "client_port": ctx.client_port,
        "server_ip": ctx.server_ip, "server_port": ctx.server_port,
        "server_name": ctx.server_name, "helo": ctx.helo, "tls": ctx.tls,
        "auth": encoder.value(ctx.auth), "improper_pipelining": ctx.improper_pipelining,
        "message_id": ctx.message_id, "sender": ctx.sender.address,
        "recipients": [r.address for r in ctx.recipients],
        "bcc_recipients": [r.address for r in ctx.bcc_recipients],
        "routes": [[r.address, route] for r, route in ctx.routes.items()],
        "route_all": ctx.route_all,
        "store": {key: _stored(encoder, key, value) for key, value in ctx.stored().items()},
    }


def _stored(encoder: _Encoder, key: str, value):
    try:
        return encoder.value(value)
    except _Uncarriable as err:
        raise HandoffError(f"store key {key!r}: a {err} cannot be handed to a worker") \
            from None


# ---- load ------------------------------------------------------------------------------

_SESSION = {  # key -> its check, for the plain fields
    "client_ip": _STR, "client_port": _INT, "server_ip": _STR, "server_port": _INT,
    "server_name": _STR, "helo": _OPTIONAL_STR, "tls": _BOOL,
    "improper_pipelining": _BOOL, "message_id": _STR,
    "sender": _STR, "recipients": _all(list, str), "bcc_recipients": _all(list, str),
    "routes": _of(list), "route_all": _OPTIONAL_STR, "store": _of(dict),
}
_KEYS = {"v", "auth", *_SESSION}  # auth: a value (a const_map or null)


class _Decoder:
    """JSON values back to script values; arrays and maps get their numbers in the order
    the encoder gave them."""

    def __init__(self):
        self.containers: list = []  # by number; None while a constant is being built
        self.inside = 0  # how many results are being decoded (a _PARTS tag needs one)

    def value(self, v, where: str, depth: int = 0):
        if depth > MAX_NESTING:
            raise HandoffError(f"{where}: nested more than {MAX_NESTING} levels deep")
        t = type(v)
        if v is None or t in (bool, str, float):
            return v
        if t is int:
            if not I64_MIN <= v <= I64_MAX:
                raise HandoffError(f"{where}: integer {v} out of range for i64")
            return v
        if t is list:
            return self._container("array", v, where, depth)
        if t is not dict or set(v) != {"t", "v"} or type(v["t"]) is not str:
            raise HandoffError(f"{where}: not a value ({type(v).__name__})")
        tag, v = v["t"], v["v"]
        if tag in _CONTAINERS:
            return self._container(tag, v, where, depth)
        if tag == "ref":
            return self._ref(v, where)
        if tag == "f64" and type(v) is str and v in _NONFINITE:
            return _NONFINITE[v]
        if tag == "mailbox" and type(v) is str:
            return _mailbox(v, where)
        if tag == "range" and _all(list, int)(v) and len(v) == 3 and v[2]:
            return range(*v)
        if (tag in _OBJECTS or (tag in _PARTS and self.inside)) and type(v) is dict:
            return self._object(tag, v, where, depth)
        raise HandoffError(f"{where}: not a value (tag {tag[:40]!r})")

    def _ref(self, number, where: str):
        if type(number) is not int or not 0 <= number < len(self.containers) \
                or self.containers[number] is None:
            raise HandoffError(f"{where}: a reference to no array or map ({number!r})")
        return self.containers[number]

    def _container(self, tag: str, v, where: str, depth: int):
        """An array or map; a mutable one is numbered before its items are read (it may
        contain itself), a constant one after (its number means nothing meanwhile)."""
        if type(v) is not _CONTAINERS[tag]:
            raise HandoffError(f"{where}: a {tag} of the wrong form")
        number = len(self.containers)
        mutable = tag in ("array", "map")
        items: list | dict = [] if type(v) is list else {}
        self.containers.append(items if mutable else None)
        if type(v) is list:
            for i, x in enumerate(v):
                items.append(self.value(x, f"{where}[{i}]", depth + 1))
        else:
            for k, x in v.items():
                items[k] = self.value(x, f"{where}[{k!r}]", depth + 1)
        if not mutable:
            items = tuple(items) if tag == "const_array" else FrozenMap(items)
            self.containers[number] = items
        return items

    def _object(self, tag: str, v: dict, where: str, depth: int):
        cls, fields = _KNOWN[tag]
        if set(v) != set(fields):
            raise HandoffError(f"{where}: a {tag} needs exactly {', '.join(fields)}")
        obj = cls.__new__(cls)  # as pickle does: the attributes are the object's state
        self.inside += 1
        for name, check in fields.items():
            value = self.value(v[name], f"{where}.{name}", depth + 1)
            if not check(value):
                raise HandoffError(f"{where}: a {tag}'s {name} cannot be {type_name(value)}")
            setattr(obj, name, value)
        self.inside -= 1
        return obj


def _mailbox(address: str, where: str) -> Mailbox:
    try:
        return Mailbox.parse(address)
    except AddressError as err:
        raise HandoffError(f"{where}: {err}") from None


def load(data: dict, message: bytes, limits: HeaderLimits = HeaderLimits()) -> Context:
    """The ctx that :func:`dump` wrote, at Stage.POST_QUEUE, with ``message`` parsed within
    the header ``limits`` (the session's). Raises HandoffError on anything else."""
    fields = _fields(data)
    decoder = _Decoder()
    auth = decoder.value(fields["auth"], "auth")
    if type(auth) not in (FrozenMap, type(None)):
        raise HandoffError(f"auth cannot be {type_name(auth)}")
    ctx = Context(fields["client_ip"], fields["client_port"], fields["server_ip"],
                  fields["server_port"], fields["server_name"])
    ctx.helo, ctx.tls, ctx.auth = fields["helo"], fields["tls"], auth
    ctx.improper_pipelining = fields["improper_pipelining"]
    ctx.begin_transaction(_mailbox(fields["sender"], "sender"), fields["message_id"])
    ctx.recipients = _recipients(fields["recipients"], "recipients")
    ctx.bcc_recipients = _recipients(fields["bcc_recipients"], "bcc_recipients")
    ctx.routes, ctx.route_all = _routes(fields["routes"]), fields["route_all"]
    for key, value in fields["store"].items():
        _store(ctx, key, decoder.value(value, f"store[{key!r}]"))
    ctx.message = _message(message, limits)
    ctx.stage = Stage.POST_QUEUE
    return ctx


def _fields(data) -> dict:
    """``data`` checked: its version, its keys, and the types of the plain fields."""
    if type(data) is not dict:
        raise HandoffError(f"a hand-off is a JSON object, not {type(data).__name__}")
    version = data.get("v")
    if type(version) is not int or version != FORMAT:
        raise HandoffError(f"hand-off format {str(version)[:20]!r} is not {FORMAT} "
                           "(written by another vSL version?)")
    if set(data) != _KEYS:
        odd = sorted(map(str, set(data) ^ _KEYS))
        raise HandoffError(f"a hand-off with the wrong keys: {', '.join(odd)[:200]}")
    wrong = next((key for key, check in _SESSION.items() if not check(data[key])), None)
    if wrong is not None:
        raise HandoffError(f"a hand-off's {wrong} cannot be {type(data[wrong]).__name__}")
    return data


def _recipients(addresses: list[str], where: str) -> list[Mailbox]:
    mailboxes = [_mailbox(a, f"{where}[{i}]") for i, a in enumerate(addresses)]
    if any(m.is_null() for m in mailboxes):
        raise HandoffError(f"{where}: a recipient cannot be the null address <>")
    return mailboxes


def _routes(pairs: list) -> dict[Mailbox, str]:
    if not all(_all(list, str)(pair) and len(pair) == 2 for pair in pairs):
        raise HandoffError("routes: not a list of [recipient, route] pairs")
    return {_mailbox(address, "routes"): route for address, route in pairs}


def _store(ctx: Context, key: str, value) -> None:
    try:
        ctx.store(key, value)
    except ScriptError as err:
        raise HandoffError(f"store: {err}") from None


def _message(data: bytes, limits: HeaderLimits) -> Message:
    try:
        return Message(data, limits)
    except HeaderLimitError as err:
        raise HandoffError(f"the message: {err}") from None
