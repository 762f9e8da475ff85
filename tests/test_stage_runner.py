"""The stages without an SMTP session: what a front end other than SMTP (a Postfix policy
service, a milter) does. It builds a Context from plain data and runs the policy's stages
through a StageRunner, which needs only the policy, a thread pool and the fallback reply."""
import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from vsl.stdlib import new_engine
from vsl.server.policy import Policy
from vsl.server.stages import StageRunner
from vsl.stdlib.ctx import Context, Stage
from vsl.stdlib.support.mail import Mailbox

FALLBACK = "451 4.3.0 Try again later"
POLICY = """
fn on_connect(ctx) {
    if ctx.client_ip == "192.0.2.66" { return status::deny("554 5.7.1 Go away"); }
    status::next()
}
fn on_helo(ctx) {
    if ctx.helo == "localhost" { return status::deny("550 5.7.1 Bad HELO"); }
    status::accept()
}
fn on_mail_from(ctx) {
    if ctx.sender.domain == "spam.example" { return status::quarantine("suspect"); }
    status::next()
}
fn on_rcpt_to(ctx) {
    let rcpt = ctx.recipients[ctx.recipients.len() - 1];
    if rcpt.local_part == "crash" { return 1 / 0; }
    if rcpt.domain != "example.org" { return status::deny("554 5.7.1 Relay access denied"); }
    status::accept("250 2.1.5 Welcome")
}
"""


@pytest.fixture
def runner(tmp_path):
    (tmp_path / "main.vsl").write_text(POLICY)
    with ThreadPoolExecutor(1) as pool:
        yield StageRunner(Policy(new_engine(), tmp_path), pool, FALLBACK)


def context(client_ip: str = "192.0.2.1") -> Context:
    """A connection as a front end would describe it: addresses and the server's name."""
    return Context(client_ip, 40000, "192.0.2.25", 25, "mx.example.org")


def line_of(text: str) -> int:
    """The line of POLICY holding ``text``."""
    return next(n for n, line in enumerate(POLICY.splitlines(), 1) if text in line)


def run(runner: StageRunner, ctx: Context, stage: Stage) -> tuple[str, str | None]:
    """The decision of ``stage``: its kind and reply."""
    status = asyncio.run(runner.run(ctx, stage))
    return status.kind, status.reply


def test_a_front_end_runs_every_stage_of_a_transaction_on_plain_data(runner):
    ctx = context()
    assert run(runner, ctx, Stage.CONNECT) == ("next", None)
    ctx.helo = "client.example"
    assert run(runner, ctx, Stage.HELO) == ("accept", None)
    ctx.begin_transaction(Mailbox.parse("<alice@client.example>"), "T1")
    assert run(runner, ctx, Stage.MAIL_FROM) == ("next", None)
    ctx.add_recipient(Mailbox.parse("<bob@example.org>"))
    assert run(runner, ctx, Stage.RCPT_TO) == ("accept", "250 2.1.5 Welcome")
    ctx.add_recipient(Mailbox.parse("<carol@elsewhere.example>"))
    assert run(runner, ctx, Stage.RCPT_TO) == ("deny", "554 5.7.1 Relay access denied")
    assert not runner.failed
    assert runner.decided_at.line == line_of("Relay access denied")  # who decided


def test_refusals_at_connect_and_helo(runner):
    assert run(runner, context("192.0.2.66"), Stage.CONNECT) == ("deny", "554 5.7.1 Go away")
    ctx = context()
    ctx.helo = "localhost"
    assert run(runner, ctx, Stage.HELO) == ("deny", "550 5.7.1 Bad HELO")


def test_a_failing_stage_answers_the_fallback_reply(runner):
    ctx = context()
    ctx.helo = "client.example"
    ctx.begin_transaction(Mailbox.parse("<alice@client.example>"), "T1")
    ctx.add_recipient(Mailbox.parse("<crash@example.org>"))
    assert run(runner, ctx, Stage.RCPT_TO) == ("deny", FALLBACK)
    assert runner.failed


def test_a_quarantine_holds_for_the_transaction_only(runner):
    ctx = context()
    ctx.helo = "client.example"
    ctx.begin_transaction(Mailbox.parse("<x@spam.example>"), "T1")
    assert run(runner, ctx, Stage.MAIL_FROM) == ("next", None)
    assert runner.quarantine == "suspect"
    ctx.add_recipient(Mailbox.parse("<bob@elsewhere.example>"))
    assert run(runner, ctx, Stage.RCPT_TO) == ("next", None)  # decided: no later stage runs
    runner.end_transaction()
    assert runner.quarantine is None


def test_a_stage_the_policy_does_not_define_is_next(runner):
    ctx = context()
    ctx.helo = "client.example"
    assert run(runner, ctx, Stage.AUTH) == ("next", None)
