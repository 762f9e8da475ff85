"""What the results of iprev::, spf::, dkim::, dmarc:: and arc:: have in common."""
from __future__ import annotations

from vsl.values import NativeObject


class CheckResult(NativeObject):
    """A check's outcome: prints as its ``value`` string and compares equal to it, and to
    a result of the same kind with the same value."""

    value: str

    def vsl_display(self) -> str:
        return self.value

    def vsl_equals(self, other) -> bool:
        if isinstance(other, type(self)):
            return self.value == other.value
        return self.value == other
