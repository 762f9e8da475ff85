"""What ``dkim::``, ``dmarc::`` and ``arc::`` share: private keys, the message as dkimpy
reads it, key records from the ``dns::`` resolver.

dkimpy is imported where it is used (its import, with dnspython's resolver, is ~100 ms
that ``vsl lint`` would pay for the declarations alone); as in dkim.py and arc.py."""
from __future__ import annotations

import base64
import binascii
import re
import sys
from pathlib import Path

from vsl.errors import ScriptError
from vsl.values import NativeObject

from ..ctx import Context
from ..dns import DnsTempError, Resolver
from .mail import Message

MIN_RSA_BITS = 1024  # shorter keys neither sign nor verify (RFC 8301)
ALGORITHMS = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}  # key type -> a=
UNREADABLE = "dkimpy cannot read the message header"
_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*"
                     r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)
_ED25519_PKCS8 = bytes.fromhex("302e020100300506032b657004220420")  # + the 32-byte seed


# ---- keys ----------------------------------------------------------------------------

class DkimKey(NativeObject):
    """A private key for dkim::sign and arc::seal; make one with dkim::key(path)."""

    vsl_type = "dkim_key"
    vsl_props = frozenset({"algorithm", "path"})

    def __init__(self, path: str, algorithm: str, private: bytes):
        self.path, self.algorithm = path, algorithm
        self.private = private  # as dkimpy takes it: PEM (RSA) or the base64 seed (Ed25519)

    def vsl_display(self) -> str:
        return f"dkim_key({self.algorithm}, {self.path})"


_KEYS: dict[Path, tuple[tuple[int, int], DkimKey]] = {}  # path -> (mtime, size), key


def script_dir() -> Path:
    """The directory of the script calling a native: the file of the nearest compiled
    script code on the stack (it runs with the engine's globals), else the working one."""
    frame = sys._getframe(1)
    while frame is not None:
        if "_G" in frame.f_globals and "_gget" in frame.f_globals:
            return Path(frame.f_code.co_filename).parent
        frame = frame.f_back
    return Path(".")


def signing_key(value, where: str) -> DkimKey:
    """The key of a ``private_key`` option: a dkim_key, or a path (relative to the calling
    script's directory)."""
    if isinstance(value, DkimKey):
        return value
    return load_key(script_dir() / value, f"{where}: option 'private_key'")


def load_key(path: Path, where: str) -> DkimKey:
    """The key in ``path``, read again only when the file changed."""
    try:
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = _KEYS.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        key = DkimKey(str(path), *_parse_key(path.read_bytes()))
    except OSError as err:
        raise ScriptError(f"{where}: cannot read {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise ScriptError(f"{where}: {path}: {err}") from None
    _KEYS[path] = (stamp, key)
    return key


def _parse_key(data: bytes) -> tuple[str, bytes]:
    """(algorithm, key for dkimpy) of a PEM key (RSA as PKCS#1 or PKCS#8, Ed25519 as
    PKCS#8) or of a bare base64 Ed25519 seed (as dkimpy's dknewkey writes it)."""
    pem = _PEM.search(data)
    try:
        der = base64.b64decode(pem.group(2) if pem else data.strip(), validate=pem is None)
    except binascii.Error:
        der = b""
    if pem is None and len(der) == 32:
        return ALGORITHMS["ed25519"], base64.b64encode(der)
    if pem is None or b"ENCRYPTED" in pem.group(1):
        raise ValueError("not an unencrypted PEM private key")
    if der.startswith(_ED25519_PKCS8) and len(der) == len(_ED25519_PKCS8) + 32:
        return ALGORITHMS["ed25519"], base64.b64encode(der[len(_ED25519_PKCS8):])
    from dkim.crypto import UnparsableKeyError, parse_private_key

    try:
        bits = parse_private_key(der)["modulus"].bit_length()
    except UnparsableKeyError:
        raise ValueError("not an RSA or Ed25519 private key") from None
    if bits < MIN_RSA_BITS:
        raise ValueError(f"an RSA key of {bits} bits is too short (at least {MIN_RSA_BITS})")
    body = base64.encodebytes(der)
    return ALGORITHMS["rsa"], b"-----BEGIN PRIVATE KEY-----\n%s-----END PRIVATE KEY-----\n" % body


# ---- messages and key records --------------------------------------------------------

def message_of(ctx, where: str) -> Message:
    """The message of ``ctx`` (from on_pre_queue on)."""
    if not isinstance(ctx, Context):
        raise ScriptError(f"{where} takes ctx as its first argument")
    if ctx.message is None:
        raise ScriptError(f"{where}: there is no message before on_pre_queue")
    return ctx.message


def parse_message(kind: type, data: bytes, where: str):
    """dkimpy's view of a message (``dkim.DKIM`` or ``dkim.ARC``); a ScriptError if it
    cannot read the header."""
    import dkim

    try:
        return kind(data)
    except (dkim.MessageFormatError, IndexError):
        raise ScriptError(f"{where}: {UNREADABLE}") from None


def has_field(data: bytes, name: bytes) -> bool:
    """Whether a line of the message starts with the field ``name``."""
    return re.search(rb"(?im)^" + re.escape(name) + rb"[ \t]*:", data) is not None


def key_records(resolver: Resolver):
    """A fetch function for :class:`Answers`: a ``selector._domainkey.domain.`` name (bytes,
    as dkimpy asks) -> the first TXT record (bytes), or None when there is none."""
    async def fetch(name: bytes):
        try:
            records = await resolver.query(name.decode("ascii"), "TXT")
        except DnsTempError:
            raise
        except (ScriptError, UnicodeDecodeError):  # a name DNS cannot carry has no records
            return None
        return b"".join(records[0].strings) if records else None
    return fetch


def dns_labels(value: str, where: str, option: str) -> str:
    """A domain name or selector option, lower-cased."""
    name = value.lower().removesuffix(".")
    if not _DOMAIN.fullmatch(name):
        raise ScriptError(f"{where}: option '{option}' must be DNS labels (like "
                          f"mail.example), not '{value}'")
    return name


def new_fields(message: Message, fields: list[bytes]) -> None:
    """Prepend header fields made by dkimpy (b"Name: value\\r\\n"), the first on top."""
    for field in reversed(fields):
        name, _, value = field.decode("ascii").partition(":")
        message.prepend(name, value.rstrip("\r\n"))


def short_reason(err: Exception) -> str:
    """dkimpy's message, short: no bytes reprs, no parenthesised details."""
    return re.sub(r"b'([^']*)'", r"\1", str(err)).split(" (")[0]
