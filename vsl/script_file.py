"""Reading a script file: one rule for the engine (main script and imports) and the linter.

A path may name anything: a FIFO (opening it waits for a writer, reading it for data), a
device (``/dev/zero`` never ends), a file far larger than ``max_script_size``. So
:func:`read_script` opens without blocking, checks what it opened (not the path, which
may change in between), and reads no more than the limit can use.
"""
from __future__ import annotations

import codecs
import os
import stat

from .errors import LimitError, Pos, VslError

_UTF8_MAX = 4  # bytes of one character in UTF-8, at most


class UnreadableScript(VslError):
    """The file cannot be read as a script (no position: the caller says where)."""


def read_script(path: str | os.PathLike, limit: int) -> str:
    """The text of the script file ``path`` (newlines made ``\\n``), at most ``limit``
    characters (0: no limit). :class:`UnreadableScript` if it is not a regular file or
    cannot be read; the ``max_script_size`` :class:`LimitError` if it is longer."""
    cap = _UTF8_MAX * (limit + 1) if limit else -1  # enough bytes for limit + 1 characters
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except (OSError, ValueError) as err:
        raise UnreadableScript(_reason(err)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnreadableScript("not a regular file")
        with open(fd, "rb", closefd=False) as file:
            data = file.read(cap)
    except OSError as err:
        raise UnreadableScript(_reason(err)) from None
    finally:
        os.close(fd)
    whole = cap < 0 or len(data) < cap
    text = _decode(data, whole)
    if limit and len(text) > limit:
        size = f"{len(text)} characters > limit {limit}" if whole else \
            f"more than {limit} characters"
        raise script_too_large(size, str(path), text)
    return text


def line_of(source: str, line: int) -> str:
    """Line ``line`` (1-based) of ``source``, "" past either end: the line an error shows."""
    lines = source.splitlines()
    return lines[line - 1] if 0 < line <= len(lines) else ""


def script_too_large(size: str, file: str, source: str) -> LimitError:
    """The ``max_script_size`` error, at the start of the script; ``size`` says how large."""
    return LimitError(f"script too large ({size}, limits.max_script_size)", Pos(file, 1, 1),
                      line_of(source, 1))


def _decode(data: bytes, whole: bool) -> str:
    """``data`` as UTF-8 with universal newlines; a character cut at the end of a part
    that is not ``whole`` is left out."""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(data, final=whole)
    except UnicodeDecodeError as err:
        raise UnreadableScript(f"not UTF-8 text (byte {err.start + 1})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _reason(err: Exception) -> str:
    if isinstance(err, ValueError):  # a NUL byte in the name
        return "not a valid file name"
    return err.strerror or str(err)
