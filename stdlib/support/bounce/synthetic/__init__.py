"""Synthetic bounces written from MTA knowledge, so the model meets wordings and MTA
families that the labelled file does not have.

Design: a reason is described by what a remote server says for it (``diagnostics``: reply
and enhanced codes, SMTP phase, short diagnostics in several phrasings and languages), and
an envelope (``envelopes``) wraps one diagnostic the way one MTA family reports it. A sample
draws a reason, an envelope and a diagnostic, then varies the diagnostic the way remote
servers do (a provider's reference or ticket appended, an RFC 5321 multi-line reply, a
generic rewording). The labelling conventions of the data are followed: "user unknown"
answered after DATA, or told with neither the SMTP phase nor a 5.1.x code, is ``filtered``;
a sender refused, including a list refusing a post, is ``rejected``; an out-of-office reply
is ``vacation``; an ARF report is ``feedback``; a queue lifetime ending after temporary
network errors is ``expired``, and so is a warning that a message is still retried. Every
sample is drawn from a seeded ``random.Random``, so the set is reproducible. No text comes
from the labelled training file: it was read only for aggregate error analysis (which
reasons and formats fail, which enhanced codes come with the "filtered after DATA"
convention).

Sources of the knowledge: RFC 3463 / 5248 (enhanced codes), RFC 3464 (DSN), RFC 3834
(auto-replies), RFC 5965 (ARF), RFC 5321 (replies, phases); the public source of
qmail (notqmail's qmail-send.c and qmail-remote.c: notice and reply texts); general
knowledge of the bounce layouts of Postfix (remote replies and its own ``X-Postfix``
findings), Exim, Sendmail, Courier, Apache James, OpenSMTPD, Haraka, MDaemon, IMail,
GroupWise, Lotus Domino, Oracle Messaging Server, Exchange 2003 and 2010+ / Office 365
(with the enhanced codes Microsoft documents for its NDRs), Gmail, Yahoo, hosted webmail
(Zoho, Yandex, Mail.ru), mail-security gateways, bulk-sending services, the delay warnings
MTAs send while they keep retrying, and the refusals of list managers (Mailman, Sympa,
LISTSERV, FML, Google Groups); and of the wordings mailbox providers publish on their
postmaster pages for refused IPs, DMARC failures, rate limits and unknown or locked
accounts. The diagnostics, notices and translations are this project's own writing of
what those systems and providers say; no bounce corpus or classifier phrase list was used.
"""
from __future__ import annotations

import random

from . import envelopes
from .diagnostics import CODES, DIAGNOSTICS, LIST_HINTS, LIST_REFUSALS, PRIOR, VACATION

# Last temporary errors told in a give-up notice, besides the network errors.
TEMPORARY = ["temporary failure, try again later", "Resources temporarily unavailable",
             "Service not available, closing transmission channel", "try again later",
             "deferred: remote server did not answer"]
REASONS = sorted(DIAGNOSTICS) + ["vacation", "feedback", "delivered"]
REFERENCES = [" - see https://postmaster.{host}/errors#{n}", " [{id}]", " ({id})",
              " https://support.{host}/mail/answer/{n}", " (mx.{host}: {id})", " - {id}",
              " Learn more at https://help.{host}/bounce?code={n}", " ERR{n}"]


def reword(text: str, rng: random.Random, case: bool = True) -> str:
    """A generic rewording: compound words split, a letter dropped or swapped, and (with
    ``case``) the case changed."""
    words = text.split(" ")
    for i, word in enumerate(words):
        roll = rng.random()
        if roll < 0.12 and len(word) >= 7 and word.isalpha():
            cut = rng.randrange(3, len(word) - 3)
            words[i] = word[:cut] + " " + word[cut:]
        elif roll < 0.18 and len(word) >= 5 and word.isalpha():
            cut = rng.randrange(1, len(word) - 1)
            words[i] = word[:cut] + word[cut + 1:]
        elif roll < 0.22 and len(word) >= 5 and word.isalpha():
            cut = rng.randrange(1, len(word) - 2)
            words[i] = word[:cut] + word[cut + 1] + word[cut] + word[cut + 2:]
    text = " ".join(words)
    roll = rng.random() if case else 1.0
    return text.upper() if roll < 0.1 else text.lower() if roll < 0.25 else text


def samples(count: int, seed: int = 14) -> list[dict]:
    """``count`` synthetic labelled bounces, ``{"text", "reason", "group"}``, reproducible."""
    rng = random.Random(seed)
    weights = [PRIOR.get(reason, 1.0) for reason in REASONS]
    out = []
    for _ in range(count):
        reason = rng.choices(REASONS, weights)[0]
        envelope = rng.choice(envelopes.ENVELOPES)
        out.append({"text": _message(reason, envelope, rng), "reason": reason,
                    "group": "synthetic-" + envelope.__name__})
    return out


def _message(reason: str, envelope, rng: random.Random) -> str:
    rcpt = f"{rng.choice(envelopes.LOCAL)}@{rng.choice(envelopes.HOSTS)}"
    if reason == "vacation":
        return envelopes.autoreply(rcpt, rng.choice(VACATION), rng)
    if reason == "feedback":
        return envelopes.feedback(rcpt, rng)
    if reason == "delivered":
        return envelopes.delivered(rcpt, rng)
    if reason == "rejected" and rng.random() < 0.55:
        hints = rng.sample(LIST_HINTS, rng.randrange(0, 4))
        return envelopes.list_refusal(rcpt, rng.choice(LIST_REFUSALS), hints, rng)
    if reason == "expired" and rng.random() < 0.5:
        reply, status, phase = rng.choice(CODES["networkerror"])
        last = rng.choice(DIAGNOSTICS["networkerror"] + TEMPORARY)
        return envelopes.expiry(rcpt, _reply(reply, status, last, rcpt, rng), phase, status, rng)
    if reason == "mailererror" and rng.random() < 0.4:
        return envelopes.local_mailer(rcpt, rng.choice([1, 64, 67, 69, 71, 75, 77, 127, 255]), rng)
    if reason == "filtered" and rng.random() < 0.5:
        return _unknown_after_data(rcpt, envelope, rng)
    reply, status, phase = rng.choice(CODES[reason])
    text = rng.choice(DIAGNOSTICS[reason])
    return envelope(rcpt, _reply(reply, status, text, rcpt, rng), phase, status, rng)


def _unknown_after_data(rcpt: str, envelope, rng: random.Random) -> str:
    """The labeler's convention: "user unknown" answered to DATA is ``filtered``, and so
    is one that shows neither the SMTP phase nor an address-status code (5.1.x)."""
    status = rng.choice(["5.0.0", "5.0.0", "5.2.0", "5.2.0", "", "5.7.1"])
    said = status if rng.random() < 0.4 else ""
    phase = "data" if status == "5.2.0" or rng.random() < 0.6 else ""
    text = rng.choice(DIAGNOSTICS["userunknown"])
    return envelope(rcpt, _reply("550", said, text, rcpt, rng), phase, status, rng)


def _reply(reply: str, status: str, text: str, rcpt: str, rng: random.Random) -> str:
    """A remote server's reply line for ``text``: codes, maybe the recipient, a reference,
    a rewording, or the RFC 5321 multi-line form."""
    if rng.random() < 0.4:
        text = reword(text, rng)
    if rng.random() < 0.3:
        text = rng.choice([f"<{rcpt}>: {text}", f"<{rcpt}>... {text}", f"{text}: {rcpt}"])
    if rng.random() < 0.25:
        text += _reference(rcpt, rng)
    if reply and rng.random() < 0.12 and len(text) > 30:
        return _multiline(reply, status, text)
    code = " ".join(x for x in (reply, status) if x and rng.random() < 0.85)
    return f"{code} {text}".strip()


def _reference(rcpt: str, rng: random.Random) -> str:
    """A provider's pointer to its help page or an error identifier."""
    ident = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(8))
    return rng.choice(REFERENCES).format(host=rcpt.split("@")[1], n=rng.randrange(100, 999),
                                         id=ident)


def _multiline(reply: str, status: str, text: str) -> str:
    """An RFC 5321 multi-line reply: ``550-5.7.1 first part`` ... ``550 5.7.1 last part``."""
    words = text.split(" ")
    half = len(words) // 2
    lead = f"{reply}-{status}" if status else f"{reply}-"
    tail = f"{reply} {status}" if status else reply
    return f"{lead} {' '.join(words[:half])} {tail} {' '.join(words[half:])}"
