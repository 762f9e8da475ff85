"""on_delivery_failure: the policy's decision on each recipient a remote refused, against
a loopback SMTP sink that refuses ``temp...`` with 451 and ``bad...`` with 550: the
recipient's state, the DSN sent or not, the retry scheduled or not; and the ctx it sees."""
from __future__ import annotations

import asyncio
import logging
import smtplib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vsl.limits import Limits
from vsl.server.delivery import Delivery
from vsl.server.delivery_hook import FailureHook, Refusal, failure_context, queued_header
from vsl.server.policy import Policy
from vsl.server.queue import Spool
from vsl.stdlib import new_engine
from vsl.stdlib.support.bounce.model import Classification
from tests.support.mailsink import MESSAGE, Sink
from tests.support.servers import config_for, running
from tests.support.smtp_tools import wait_for
from tests.test_delivery import SENDER, Clock, dsns, in_tmp, queue, report, with_delivery

DAY = 86400
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "delivery-failures"

POLICY = """
fn on_delivery_failure(ctx) {
    let local = ctx.recipient.local_part;
    if local.ends_with("-deny") { return status::deny(); }
    if local.ends_with("-retry") { return status::accept(); }
    if local.ends_with("-hold") { return status::quarantine("bounced"); }
    if local.ends_with("-crash") { return 1 / 0; }
    if local.ends_with("-spin") { loop { } }
    if local.ends_with("-faccept") { return status::faccept(); }
    status::next()
}
"""


@pytest.fixture
def pool():
    with ThreadPoolExecutor(1) as pool:
        yield pool


def make_world(tmp_path, scripts: Path, pool, **delivery) -> tuple:
    """A spool, a fake clock and a worker whose policy is ``scripts``/main.vsl (limits:
    10,000 operations); ``delivery``: more arguments of Delivery."""
    policy = Policy(new_engine(Limits(max_operations=10_000, max_time=2.0)), scripts)
    spool, clock = Spool(tmp_path / "queue"), Clock()
    config = in_tmp(tmp_path, max_age=10 * DAY)
    return spool, clock, Delivery(spool, config, "mx.test", ("example.test",), clock=clock,
                                  hook=FailureHook(policy, pool), **delivery)


@pytest.fixture
def world(tmp_path, pool):
    """A world whose policy has POLICY's hook."""
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "main.vsl").write_text(POLICY)
    return make_world(tmp_path, tmp_path / "policy", pool)


def attempt(world, rcpt: str, **envelope):
    """One delivery of a message to ``rcpt`` at the sink, then one of what it queued (a
    DSN to the sender's Maildir); the message's entry after the first, or None."""
    spool, _, delivery = world

    async def main():
        async with Sink() as sink:
            msg_id = await queue(spool, f"smtp://127.0.0.1:{sink.port}", [rcpt], **envelope)
            await delivery.run_once()
            queued = {e.id: e for e in await spool.list()}
            entry = queued.get(msg_id)
            await delivery.run_once()
            return entry

    return asyncio.run(main())


@pytest.mark.parametrize("rcpt, queue_name, status", [
    ("temp-next@remote.test", "deferred", "deferred"),    # 4xx: retried on schedule
    ("temp-retry@remote.test", "deferred", "deferred"),
    ("bad-retry@remote.test", "deferred", "deferred"),    # 5xx treated as transient
    ("temp-hold@remote.test", "quarantine/bounced", "deferred"),
    ("bad-hold@remote.test", "quarantine/bounced", "failed"),
])
def test_decisions_that_keep_the_message(world, tmp_path, rcpt, queue_name, status):
    entry = attempt(world, rcpt)
    (state,) = entry.envelope.recipients
    assert (entry.queue, state.status) == (queue_name, status)
    assert dsns(tmp_path) == []
    if queue_name == "deferred":
        assert entry.envelope.next_attempt == pytest.approx(world[1].now + 60)


@pytest.mark.parametrize("rcpt, code", [
    ("temp-deny@remote.test", "4.2.0"),   # 4xx: given up at once
    ("bad-deny@remote.test", "5.1.1"),
    ("bad-next@remote.test", "5.1.1"),    # 5xx: failed, as without a hook
])
def test_decisions_that_fail_the_recipient_send_a_dsn(world, tmp_path, rcpt, code):
    entry = attempt(world, rcpt)
    assert entry is None and asyncio.run(world[0].list()) == []  # no retry: the message is done
    (dsn,) = dsns(tmp_path)
    (block,) = report(dsn)[1:]
    assert block["Final-Recipient"] == f"rfc822; {rcpt}"
    assert (block["Action"], block["Status"]) == ("failed", code)


def test_a_5xx_is_never_retried_beyond_max_age(world, tmp_path):
    attempt(world, "bad-retry@remote.test", received_at=world[1].now - 10 * DAY - 1)
    assert asyncio.run(world[0].list()) == []
    (block,) = report(dsns(tmp_path)[0])[1:]
    assert block["Status"] == "4.4.7"


@pytest.mark.parametrize("local, logged", [
    ("crash", "main.vsl:7:45: division by zero"),  # the error, with its position
    ("spin", "too many operations"),
    ("faccept", "on_delivery_failure returned status::faccept(): it may return "
                "status::next(), status::deny(), status::accept() or status::quarantine(name)"),
])
def test_a_failing_hook_gives_the_default(world, tmp_path, caplog, local, logged):
    temp = attempt(world, f"temp-{local}@remote.test")
    assert temp.queue == "deferred" and temp.envelope.recipients[0].status == "deferred"
    assert attempt(world, f"bad-{local}@remote.test") is None
    assert len(dsns(tmp_path)) == 1
    assert logged in caplog.text


def test_each_decision_is_logged(world, caplog):
    caplog.set_level(logging.INFO, "vsl.delivery")
    entry = attempt(world, "bad-retry@remote.test")
    assert f"{entry.id}: to=<bad-retry@remote.test> on_delivery_failure: " \
           "reason=userunknown decision=accept()" in caplog.text


def test_no_hook_in_the_policy_changes_nothing(world, tmp_path):
    (tmp_path / "policy" / "main.vsl").write_text("fn on_helo(ctx) { status::next() }\n")
    world[2].hook.policy.reload()
    assert attempt(world, "temp-deny@remote.test").queue == "deferred"


SENDING = """
fn on_rcpt_to(ctx) {
    transport::forward(ctx, "smtp://127.0.0.1:PORT?tls=none");
    status::next()
}
fn on_delivery_failure(ctx) {
    if ctx.bounce == "userunknown" { return status::deny(); }
    status::next()
}
"""


def test_a_real_server_asks_its_policy(tmp_path):
    """vsl serve's delivery runs the policy's hook: a 4xx "no such user" from the
    receiving server is given up at once, and the sender gets its DSN."""
    refusing = 'fn on_rcpt_to(ctx) { status::deny("450 4.1.1 <x@example.test>: Recipient ' \
               'address rejected: User unknown in local recipient table") }\n'
    (tmp_path / "rx").mkdir()
    with running(config_for(tmp_path / "rx", refusing)) as receiver:
        script = SENDING.replace("PORT", str(receiver.port()))
        with running(with_delivery(config_for(tmp_path, script))) as server:
            with smtplib.SMTP("127.0.0.1", server.port(), timeout=10) as smtp:
                smtp.sendmail(SENDER, ["x@example.test"], MESSAGE)
            assert wait_for(lambda: not asyncio.run(server.spool.list()) and dsns(tmp_path))
    (block,) = report(dsns(tmp_path)[0])[1:]
    assert (block["Action"], block["Status"]) == ("failed", "4.1.1")


# ---- what the hook sees ------------------------------------------------------------------

FIELDS = """
fn fields(ctx) {
    [ctx.message_id, `${ctx.sender}`, ctx.recipient.domain, ctx.reply.code, ctx.reply.text,
     `${ctx.reply}`, ctx.bounce == "mailboxfull", ctx.bounce.confidence, ctx.bounce.hard,
     ctx.bounce.status, ctx.attempt, ctx.age, ctx.get_header("Subject"), type_of(ctx.bounce)]
}
fn tries_to_edit(ctx) { ctx.set_header("X-A", "1") }
"""


def refusal(sender: str = SENDER) -> Refusal:
    verdict = Classification("mailboxfull", 0.9, False, "4.2.2", "452 4.2.2 Mailbox full")
    return Refusal("q1", sender, "bob@remote.test", "452 4.2.2 Mailbox full", verdict, 3, 7200.4)


def test_ctx_offers_what_delivery_knows():
    script = new_engine().load_source(FIELDS, "fields.vsl")
    assert script.call("fields", failure_context(refusal(), queued_header(MESSAGE))) == [
        "q1", SENDER, "remote.test", 452, "4.2.2 Mailbox full", "452 4.2.2 Mailbox full",
        True, 0.9, False, "4.2.2", 3, 7200, "hi", "bounce_result"]
    null = failure_context(refusal(sender=""), queued_header(MESSAGE))
    assert script.call("fields", null)[1] == "<>"
    with pytest.raises(Exception, match="set_header.. is not available after on_pre_queue"):
        script.call("tries_to_edit", null)


# ---- the example policy ------------------------------------------------------------------

class Verdicts:
    """A classifier judging every reply ``reason``: the example's decisions by reason,
    whatever the shipped model makes of the sink's replies."""

    def __init__(self, reason: str):
        self.reason = reason

    def classify_text(self, text: str, source: str = "", learn: bool = False) -> Classification:
        return Classification(self.reason, 0.9, text[:1] == "5", "", text)


@pytest.mark.parametrize("rcpt, reason, age, queue_name", [
    ("temp@remote.test", "userunknown", 0, None),          # 4xx, but it will not exist
    ("temp@remote.test", "mailboxfull", 0, "deferred"),    # full: retried for a day
    ("temp@remote.test", "mailboxfull", 2 * DAY, None),
    ("bad@remote.test", "blocked", 0, "deferred"),         # 5xx, but it will pass later
    ("bad@remote.test", "filtered", 0, None),              # the default: a 5xx bounces
])
def test_the_example_policy(tmp_path, pool, rcpt, reason, age, queue_name):
    world = make_world(tmp_path, EXAMPLE, pool, reasons=Verdicts(reason))
    entry = attempt(world, rcpt, received_at=world[1].now - age)
    assert (entry and entry.queue) == queue_name
    assert len(dsns(tmp_path)) == (queue_name is None)
