"""What on_pre_queue changed, as milter modification actions.

The MTA keeps its own copy of the message; a milter can only tell it how to edit it.
:class:`Snapshot` remembers the header fields, recipients and sender before the stage;
:meth:`Snapshot.edits` compares them with after and returns the actions that turn the
MTA's copy into vSL's:

- header fields: a difference of the (name, value) lists. Removed fields become
  SMFIR_CHGHEADER with an empty value, added ones SMFIR_INSHEADER at their position
  (SMFIR_ADDHEADER at the end); a changed value is a removal and an addition. The
  actions go from the last field to the first, so every index names a field of the MTA's
  copy as it still is when the action applies.
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


class Snapshot:
    """The message and envelope of ``ctx`` before on_pre_queue."""

    def __init__(self, ctx: Context):
        self.fields: list[Field] = ctx.message.fields()
        self.recipients = [r.address for r in ctx.all_recipients()]
        self.sender = ctx.sender.address

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
                actions.append(responses.InsertHeader(headername=name, headertext=value,
                                                      index=i1 + offset))
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

