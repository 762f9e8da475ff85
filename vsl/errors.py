"""Error types of the vSL engine.

Every error a script can cause is a :class:`VslError`. It carries the source
position (``file:line:col``), the source line for a caret display and, for
runtime errors, the script call stack.

``ScriptError`` and its subclasses can be caught by a script's
``try { } catch { }``; ``LimitError`` cannot.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Pos:
    """A 1-based source position."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Frame:
    """One script call-stack entry: the function and where it was executing."""

    function: str
    pos: Pos


class VslError(Exception):
    """Base of every error the engine raises."""

    kind = "error"

    def __init__(self, message: str, pos: Pos | None = None,
                 source_line: str | None = None, stack: tuple[Frame, ...] = ()):
        super().__init__(message)
        self.message = message
        self.pos = pos
        self.source_line = source_line
        self.stack = stack

    def located(self, pos: Pos, source_line: str | None, stack: tuple[Frame, ...] = ()) -> "VslError":
        """Attach a position to an error raised without one; returns self."""
        self.pos, self.source_line, self.stack = pos, source_line, stack
        return self

    def __str__(self) -> str:
        head = f"{self.pos}: {self.message}" if self.pos else self.message
        lines = [head]
        if self.source_line is not None and self.pos is not None:
            lines.append("  " + self.source_line.rstrip("\n").expandtabs(1))
            lines.append("  " + " " * (self.pos.col - 1) + "^")
        previous, repeats = None, 0
        for frame in reversed(self.stack):
            if frame == previous:
                repeats += 1
                continue
            if repeats:
                lines.append(f"  ... the frame above repeated {repeats} more time(s)")
            lines.append(f"  in {frame.function} at {frame.pos}")
            previous, repeats = frame, 0
        if repeats:
            lines.append(f"  ... the frame above repeated {repeats} more time(s)")
        return "\n".join(lines)


class VslSyntaxError(VslError):
    """The script text does not parse, or is statically wrong (undefined name, ...)."""


class ScriptError(VslError):
    """A runtime error a script may catch with try/catch."""


class ThrownError(ScriptError):
    """A value thrown by the script's ``throw`` statement."""

    def __init__(self, value, message: str):
        super().__init__(message)
        self.value = value


class LimitError(VslError):
    """A sandbox limit was reached; scripts cannot catch it."""


class InternalError(VslError):
    """A bug in the engine or a native, reported with the script position."""
