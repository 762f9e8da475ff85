"""One SMTP session as Postfix's policy requests show it, and the bounded table of them.

Postfix asks once per restriction list evaluation, so the requests of one session come
one by one (CONNECT, HELO, MAIL, RCPT ... with ``smtpd_delay_reject=no``) or all at RCPT
(the default ``smtpd_delay_reject=yes``). A :class:`Conversation` remembers what each
stage decided, so that a stage runs once (``on_rcpt_to`` once per recipient) and a later
request replays its decision, and keeps the session's ``ctx`` (and so ``ctx.store``)
across requests.

Postfix names a message by its ``instance`` attribute, set from the end of MAIL FROM
on (empty before); its requests come over one policy connection, but Postfix may close
that connection (``smtpd_policy_service_max_idle``) and open another. So a connection
follows its current conversation, and :class:`Conversations` finds a conversation by its
instance from any connection; it holds at most ``limit`` of them, each for at most
``max_age`` seconds after its last request, the least recently used going first.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from vsl.stdlib.ctx import Context, Stage

from ..stages import StageRunner


@dataclass
class Conversation:
    """A session's ctx, its stage runner and the action each stage decided."""
    client: tuple[str, str]  # (client_address, client_port): whose session it is
    ctx: Context
    runner: StageRunner
    instance: str = ""       # Postfix's name of the current message, once known
    decided: dict = field(default_factory=dict)  # Stage, or (RCPT_TO, address) -> action
    last_used: float = 0.0

    def end_message(self) -> None:
        """The transaction's decisions and values are forgotten, the session's (connect,
        helo, values stored before MAIL FROM) stay."""
        self.ctx.reset()
        self.runner.end_transaction()
        self.decided = {key: action for key, action in self.decided.items()
                        if isinstance(key, Stage) and key < Stage.MAIL_FROM}


class Conversations:
    """Conversations by instance, bounded in number and age (see the module docstring)."""

    def __init__(self, new_runner: Callable[[], StageRunner], server_name: str,
                 limit: int = 10_000, max_age: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic):
        self.new_runner, self.server_name = new_runner, server_name
        self.limit, self.max_age, self.clock = limit, max_age, clock
        self._by_instance: OrderedDict[str, Conversation] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_instance)

    def find(self, instance: str, client: tuple[str, str],
             current: Conversation | None) -> Conversation:
        """The conversation of a request: its instance's, else the connection's
        ``current`` one if it is the same client's, else a new one."""
        self._evict()
        found = self._by_instance.get(instance) if instance else None
        if found is None and current is not None and current.client == client:
            found = current
        if found is None:
            found = self._new(client)
        elif found.instance in self._by_instance:
            self._by_instance.move_to_end(found.instance)
        found.last_used = self.clock()
        return found

    def bind(self, conversation: Conversation, instance: str) -> None:
        """``conversation``'s current message is ``instance`` from now on."""
        conversation.instance = instance
        self._by_instance[instance] = conversation
        self._by_instance.move_to_end(instance)
        self._evict()

    def new_message(self, conversation: Conversation) -> None:
        """``conversation``'s message ended (a new MAIL FROM, HELO or instance): its
        instance no longer finds it."""
        self._by_instance.pop(conversation.instance, None)
        conversation.instance = ""
        conversation.end_message()

    def _new(self, client: tuple[str, str]) -> Conversation:
        address, port = client
        ctx = Context(address, int(port) if port.isdigit() else 0, "", 0, self.server_name)
        return Conversation(client, ctx, self.new_runner())

    def _evict(self) -> None:
        """Drop the oldest conversations beyond the limit and those unused too long."""
        oldest = self.clock() - self.max_age
        while self._by_instance:
            instance, conversation = next(iter(self._by_instance.items()))
            if len(self._by_instance) <= self.limit and conversation.last_used >= oldest:
                break
            del self._by_instance[instance]
