"""The status-code mapping: a reason from the codes alone, when the model cannot be loaded.

Design: the table follows the meaning the standards give each code, never a reply's
wording. An enhanced status code (RFC 3463, with the later codes of the IANA registry,
RFC 5248) is looked up by subject and detail (``1.1``: bad destination mailbox), then by
its subject alone (``1``: addressing status); without one, the SMTP reply code's meaning
in RFC 5321 §4.2 (and RFC 7504 for 521/556) names the reason. The reasons are those the
model knows. Its answers carry confidence 0: they are a fallback, not a judgement.
"""
from __future__ import annotations

from .message import Bounce
from .model import Classification

DETAIL_REASONS = {
    "1.1": "userunknown", "1.2": "hostunknown", "1.3": "userunknown", "1.4": "userunknown",
    "1.6": "hasmoved", "1.7": "rejected", "1.8": "rejected", "1.10": "notaccept",
    "2.1": "suspend", "2.2": "mailboxfull", "2.3": "mesgtoobig", "2.4": "systemerror",
    "3.1": "systemfull", "3.2": "notaccept", "3.4": "mesgtoobig",
    "4.1": "networkerror", "4.2": "networkerror", "4.3": "networkerror",
    "4.4": "hostunknown", "4.5": "systemfull", "4.6": "networkerror", "4.7": "expired",
    "5.3": "exceedlimit",
    "7.1": "rejected", "7.2": "rejected", "7.8": "authfailure", "7.10": "failedstarttls",
    "7.11": "failedstarttls", "7.13": "suspend", "7.20": "authfailure",
    "7.21": "authfailure", "7.22": "authfailure", "7.23": "authfailure",
    "7.24": "authfailure", "7.25": "requireptr", "7.26": "authfailure",
    "7.27": "rejected",
}
SUBJECT_REASONS = {
    "0": "undefined", "1": "userunknown", "2": "mailboxfull", "3": "systemerror",
    "4": "networkerror", "5": "syntaxerror", "6": "contenterror", "7": "securityerror",
}
REPLY_REASONS = {
    "421": "notaccept", "450": "onhold", "451": "systemerror", "452": "systemfull",
    "500": "syntaxerror", "501": "syntaxerror", "502": "syntaxerror", "503": "syntaxerror",
    "504": "syntaxerror", "521": "notaccept", "550": "rejected", "551": "hasmoved",
    "552": "mailboxfull", "553": "userunknown", "554": "rejected", "556": "notaccept",
}
UNKNOWN = "undefined"


def reason_of(status: str, reply_code: str) -> str:
    """The reason the codes name (``undefined`` when they name none)."""
    if status.startswith("2."):
        return "delivered"
    if status:
        _, subject, detail = status.split(".")
        return DETAIL_REASONS.get(f"{subject}.{detail}") or SUBJECT_REASONS.get(subject, UNKNOWN)
    return REPLY_REASONS.get(reply_code, UNKNOWN)


def classify_by_codes(bounce: Bounce) -> Classification:
    """The fallback classification of a bounce by its first recipient's codes; the
    status is the enhanced code found, else the reply code's class as ``X.0.0``."""
    first = bounce.first
    status = first.status or (f"{first.reply_code[0]}.0.0" if first.reply_code else "")
    return Classification(reason=reason_of(first.status, first.reply_code), confidence=0.0,
                          hard=status.startswith("5"), status=status,
                          diagnostic=first.diagnostic or bounce.text[:500])
