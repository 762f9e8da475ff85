"""Scenarios from Postfix's mail log: a site replays the shapes of its real traffic.

Postfix logs no conversation, but enough of each one to rebuild it (the formats are
smtpd.c's and smtpd_check.c's, as a Postfix 3.x writes them):

    postfix/smtpd[PID]: connect from NAME[IP]
    postfix/smtpd[PID]: NOQUEUE: reject: RCPT from NAME[IP]: 550 5.1.1 <b@x>: Recipient
        address rejected: ...; from=<a@y> to=<b@x> proto=ESMTP helo=<h>
    postfix/smtpd[PID]: QUEUEID: client=NAME[IP]          (a message is being accepted)
    postfix/qmgr[PID]: QUEUEID: from=<a@y>, size=N, nrcpt=M (queue active)
    postfix/discard[PID]: QUEUEID: to=<b@x>, [orig_to=<c@x>,] relay=..., status=sent (...)
    postfix/smtpd[PID]: disconnect from NAME[IP] ehlo=1 mail=1 rcpt=1/2 ... commands=...

A session is the smtpd process's lines from ``connect`` to ``disconnect``; its
transactions are the rejections (``reject: STAGE``, with the reply Postfix gave) and the
messages it queued, whose sender and recipients come from the queue manager's and the
delivery agents' lines for that queue id. Each session becomes a conversation: greeting,
EHLO (HELO for ``proto=SMTP``) with the logged HELO name (else the client's name, or its
address literal), per transaction MAIL FROM, each RCPT TO, then DATA and a stand-in
message when a recipient was accepted (else RSET before the next transaction), QUIT
when the client sent one (the disconnect line's counts; a client that said nothing gets
the greeting alone).
Every turn expects the reply Postfix gave: the logged one for a rejection, the code of
success otherwise. Rejections at VRFY and ETRN are not turned into turns; rejection
warnings (``reject_warning``) changed nothing and are ignored.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .replay import Scenario, Turn

_LINE = re.compile(r"\spostfix[\w.-]*/(?P<service>[\w./-]+)\[(?P<pid>\d+)\]: (?P<text>.*)$")
_CONNECT = re.compile(r"connect from (?P<name>[^\[\s]*)\[(?P<ip>[^\]]+)\]")
_QUEUED = re.compile(r"(?P<qid>\w+): client=")
_REJECT = re.compile(r"(?P<qid>\w+): reject: (?P<stage>[A-Z/-]+) from \S+: (?P<reply>.*?);"
                     r"(?P<fields>(?: (?:from|to|helo)=<[^>]*>| proto=\S+)*)$")
_FIELD = re.compile(r"(\w+)=(?:<([^>]*)>|(\S+))")
_QUEUE_LINE = re.compile(r"(?P<qid>\w+): (?P<fields>(?:from|to)=<.*)$")


@dataclass
class _Transaction:
    sender: str | None = None
    recipients: dict[str, str | None] = field(default_factory=dict)  # address: refusal
    refusals: dict[str, str] = field(default_factory=dict)  # MAIL, DATA, END-OF-MESSAGE
    queue_id: str | None = None


@dataclass
class _Session:
    name: str  # where it starts: LOG:LINE
    client: str
    client_ip: str
    helo: str | None = None
    esmtp: bool = True
    helo_refusal: str | None = None
    counts: dict[str, str] | None = None  # the disconnect line's: ehlo=1 quit=1 ...
    transactions: list[_Transaction] = field(default_factory=list)


class _Reader:
    """Follows the log line by line; ``sessions`` grows as connections start."""

    def __init__(self, source: str):
        self.source = source
        self.sessions: list[_Session] = []
        self.open: dict[str, _Session] = {}  # smtpd PID: its current session
        self.queued: dict[str, _Transaction] = {}  # queue id: its transaction

    def line(self, number: int, line: str) -> None:
        found = _LINE.search(line)
        if not found:
            return
        text = found["text"]
        if found["service"].split("/")[-1] != "smtpd":
            self._queue_line(text)
            return
        pid = found["pid"]
        connect = _CONNECT.match(text)
        if connect:
            session = _Session(f"{self.source}:{number}", connect["name"], connect["ip"])
            self.sessions.append(session)
            self.open[pid] = session
        elif text.startswith("disconnect from ") and pid in self.open:
            self.open.pop(pid).counts = _fields(text)
        elif pid in self.open:
            self._session_line(self.open[pid], text)

    def _session_line(self, session: _Session, text: str) -> None:
        queued, reject = _QUEUED.match(text), _REJECT.match(text)
        if queued:
            transaction = self._current(session, queued["qid"], None)
            transaction.queue_id = queued["qid"]
            self.queued[queued["qid"]] = transaction
        elif reject:
            fields = _fields(reject["fields"])
            session.helo = fields.get("helo", session.helo)
            session.esmtp = fields.get("proto", "ESMTP").startswith("ESMTP")  # ESMTPSA...
            self._rejected(session, reject["qid"], reject["stage"], reject["reply"], fields)

    def _rejected(self, session: _Session, qid: str, stage: str, reply: str,
                  fields: dict[str, str]) -> None:
        if stage in ("CONNECT", "HELO", "EHLO"):
            session.helo_refusal = reply
        elif stage in ("MAIL", "RCPT", "DATA", "END-OF-MESSAGE"):
            transaction = self._current(session, qid, fields.get("from"))
            transaction.sender = fields.get("from", transaction.sender)
            if stage == "RCPT":
                transaction.recipients[fields.get("to", "")] = reply
            else:
                transaction.refusals[stage] = reply

    def _current(self, session: _Session, qid: str, sender: str | None) -> _Transaction:
        """The transaction a line belongs to: the session's last one, unless that one
        was queued under another id, or was for another sender, or ended at its MAIL."""
        last = session.transactions[-1] if session.transactions else None
        if (last is None or "MAIL" in last.refusals
                or (last.queue_id and last.queue_id != qid)
                or (sender is not None and last.sender is not None and sender != last.sender)):
            last = _Transaction()
            session.transactions.append(last)
        return last

    def _queue_line(self, text: str) -> None:
        """The queue manager's sender and the delivery agents' recipients of a message
        that an smtpd of the log accepted."""
        found = _QUEUE_LINE.match(text)
        transaction = self.queued.get(found["qid"]) if found else None
        if transaction is None:
            return
        fields = _fields(found["fields"])
        if "to" not in fields:
            transaction.sender = fields.get("from", transaction.sender)
        elif "status" in fields:
            transaction.recipients.setdefault(fields.get("orig_to") or fields["to"], None)


def _fields(text: str) -> dict[str, str]:
    """``from=<a> to=<b> proto=ESMTP`` (or comma-separated) as a dict."""
    return {found[1]: found[2] if found[2] is not None else found[3].rstrip(",")
            for found in _FIELD.finditer(text)}


def scenarios(path: Path) -> list[Scenario]:
    """One scenario for each smtpd connection in the log at ``path``."""
    reader = _Reader(str(path))
    with path.open(encoding="utf-8", errors="replace") as log:
        for number, line in enumerate(log, 1):
            reader.line(number, line.rstrip("\n"))
    return [_conversation(session) for session in reader.sessions]


def _conversation(session: _Session) -> Scenario:
    """The session's turns; its disconnect line (when logged) says whether the client
    greeted with EHLO or HELO, or said nothing at all, and whether it sent QUIT."""
    counts = session.counts
    scenario = Scenario(f"{session.name} {session.client}[{session.client_ip}]",
                        [Turn((), ("220 *",))], session.client_ip)
    if counts is not None and counts.get("commands", "").startswith("0/"):
        return scenario
    greeted = counts is not None and ("ehlo" in counts or "helo" in counts)
    esmtp = "ehlo" in counts if greeted else session.esmtp
    helo = session.helo or (session.client if session.client != "unknown"
                            else f"[{session.client_ip}]")
    scenario.turns.append(Turn((("EHLO " if esmtp else "HELO ") + helo,),
                               (session.helo_refusal or "250*",)))
    for index, transaction in enumerate(session.transactions):
        last = index == len(session.transactions) - 1
        scenario.turns += _transaction_turns(transaction, last)
    if counts is None or "quit" in counts:
        scenario.turns.append(Turn(("QUIT",), ("221 *",)))
    return scenario


def _transaction_turns(transaction: _Transaction, last: bool) -> list[Turn]:
    sender = transaction.sender or ""
    refusals = transaction.refusals
    turns = [Turn((f"MAIL FROM:<{sender}>",), (refusals.get("MAIL", "250 *"),))]
    if "MAIL" in refusals:
        return turns
    turns += [Turn((f"RCPT TO:<{recipient}>",), (refusal or "250 *",))
              for recipient, refusal in transaction.recipients.items()]
    if any(refusal is None for refusal in transaction.recipients.values()):
        turns.append(Turn(("DATA",), (refusals.get("DATA", "354 *"),)))
        if "DATA" not in refusals:
            turns.append(Turn(_stand_in(transaction), (refusals.get("END-OF-MESSAGE", "250 *"),),
                              message=True))
    elif not last:
        turns.append(Turn(("RSET",), ("250 *",)))
    return turns


def _stand_in(transaction: _Transaction) -> tuple[str, ...]:
    """The message sent in place of the logged one (whose content the log does not have)."""
    sender = transaction.sender or "mailer-daemon@invalid"
    return (f"From: <{sender}>", "Subject: replayed from the mail log", "",
            "A stand-in for a message Postfix accepted.", ".")
