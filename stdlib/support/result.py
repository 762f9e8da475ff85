"""What the results of iprev::, spf::, dkim::, dmarc::, arc:: and bounce:: have in common;
bounce::classify's result, which on_delivery_failure also sees (``ctx.bounce``)."""
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


class BounceResult(CheckResult):
    """The outcome of bounce::classify; prints as its reason and compares equal to it."""

    vsl_type = "bounce_result"
    vsl_props = frozenset({"reason", "confidence", "hard", "status", "diagnostic"})

    def __init__(self, classification):
        self.value = self.reason = classification.reason
        self.confidence = classification.confidence
        self.hard = classification.hard
        self.status = classification.status
        self.diagnostic = classification.diagnostic
