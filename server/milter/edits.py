"""What on_pre_queue changed, as milter modification actions.

The MTA keeps its own copy of the message; a milter can only tell it how to edit it.
:class:`Snapshot` remembers the header fields, recipients and sender before the stage;
:meth:`Snapshot.edits` compares them with after and returns the actions that turn the
MTA's copy into vSL's:

- header fields: a difference of the (name, value) lists. Removed fields become
  SMFIR_CHGHEADER with an empty value, added ones SMFIR_INSHEADER at their position
  (SMFIR_ADDHEADER at the end); a changed value is a removal and an addition. The
  actions go from the last field to the first, so every index names a field of the MTA's
  copy as it still is when the action applies. The MTA's own Received: field is not
  shown to milters but counts in SMFIR_INSHEADER's index (Postfix 3.7): a field vSL
  puts first goes on top, above it, as ``vsl serve`` puts its own above its Received:;
  one after the n-th field the MTA showed goes at n + 1.
- recipients: SMFIR_DELRCPT / SMFIR_ADDRCPT (bcc() recipients included);
- the sender: SMFIR_CHGFROM.

An action the MTA did not offer at negotiation is left out and logged.
"""
from __future__ import annotations

import logging
from difflib import SequenceMatcher

from purepythonmilter.protocol import responses

from vsl.stdlib.ctx import Context

log = logging.getLogger("vsl.milter")

Field = tuple[str, str]
HIDDEN_TRACE = 1  # the MTA's own Received: field, above the fields it shows milters


class Snapshot:
    """The message before on_pre_queue and the envelope as the MTA has it (``sender``
    and ``recipients``: the addresses of the MAIL and RCPT commands it accepted; a stage
    before on_pre_queue may already have changed vSL's)."""

    def __init__(self, ctx: Context, sender: str, recipients: list[str]):
        self.fields: list[Field] = ctx.message.fields()
        self.sender, self.recipients = sender, recipients

    def edits(self, ctx: Context, space: str) -> list[responses.AbstractManipulation]:
        """The actions turning the snapshot into what ``ctx`` holds now (``space``: what
        goes before each header value, " " when the MTA negotiated it must be given)."""
        now = [r.address for r in ctx.all_recipients()]
        actions = header_edits(self.fields, ctx.message.fields(), space)
        actions += [responses.RemoveRecipient(recipient=f"<{r}>")
                    for r in self.recipients if r not in now]
        actions += [responses.AddRecipient(recipient=f"<{r}>")
                    for r in now if r not in self.recipients]
        if ctx.sender.address != self.sender:
            actions.append(responses.ChangeMailFrom(mail_from=f"<{ctx.sender.address}>"))
        return actions


def header_edits(before: list[Field], after: list[Field],
                 space: str = "") -> list[responses.AbstractManipulation]:
    """The header actions turning ``before`` into ``after`` (see the module docstring);
    ``space`` goes before each new value."""
    actions: list[responses.AbstractManipulation] = []
    matcher = SequenceMatcher(None, before, after, autojunk=False)
    for op, i1, i2, j1, j2 in reversed(matcher.get_opcodes()):
        if op == "equal":
            continue
        for index in range(i2 - 1, i1 - 1, -1):  # removed, or replaced: last first
            name = before[index][0]
            actions.append(responses.ChangeHeader(
                headername=name, headertext="", nth_occurrence=_occurrence(before, index)))
        for offset, (name, value) in enumerate(after[j1:j2]):
            value = space + value
            if i1 == len(before):
                actions.append(responses.AppendHeader(headername=name, headertext=value))
            else:
                position = i1 + offset
                actions.append(responses.InsertHeader(
                    headername=name, headertext=value,
                    index=position + HIDDEN_TRACE if position else 0))
    return actions


def _occurrence(fields: list[Field], index: int) -> int:
    """Which field of its name (1: the first, names compared without case) is
    ``fields[index]``."""
    key = fields[index][0].lower()
    return sum(1 for name, _ in fields[:index + 1] if name.lower() == key)


def offered(actions: list[responses.AbstractManipulation],
            allowed: set[type]) -> list[responses.AbstractManipulation]:
    """The actions whose kind the MTA offered; the others are logged and dropped."""
    kept = [a for a in actions if type(a) in allowed]
    for dropped in (a for a in actions if type(a) not in allowed):
        log.warning("the MTA did not offer %s: not applied", type(dropped).__name__)
    return kept

