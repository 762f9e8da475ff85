"""The ``ctx`` object: what each stage may read and change, through real scripts."""
from __future__ import annotations

import re
import textwrap

import pytest

from vsl.stdlib.ctx import Context, Stage, entry_points
from vsl.stdlib.support.mail import Mailbox
from vsl.stdlib import new_engine
from vsl.errors import ScriptError, VslError, VslSyntaxError
from vsl.limits import Limits
from vsl.values import NativeObject

from tests.support.contexts import MESSAGE, session

ENGINE = new_engine(Limits(max_operations=100_000, max_time=5.0))



def load(source: str):
    return ENGINE.load_source(textwrap.dedent(source), "ctx_test.vsl")




def run(body: str, ctx: Context):
    """Run ``body`` as on_pre_queue-like stage code with ``ctx`` bound."""
    return load(f"fn stage(ctx) {{\n{body}\n}}").call("stage", ctx)


def error(body: str, ctx: Context) -> str:
    """The message of the error ``body`` raises, caught by the script itself."""
    source = f"fn stage(ctx) {{\n try {{\n{body};\n }} catch (e) {{ return e; }}\n \"no error\"\n}}"
    return load(source).call("stage", ctx)


def test_stages_are_the_linters_stage_functions():
    assert [stage.function for stage in Stage] == list(entry_points().names)
    assert Stage.CONNECT < Stage.HELO < Stage.AUTH < Stage.MAIL_FROM < Stage.RCPT_TO \
        < Stage.PRE_QUEUE < Stage.POST_QUEUE < Stage.DELIVERY_FAILURE


# ---- properties, stage by stage ----------------------------------------------------------

# property -> (first stage, last stage) where scripts can read it
PROPERTIES = {
    "client_ip": (Stage.CONNECT, Stage.POST_QUEUE),
    "client_port": (Stage.CONNECT, Stage.POST_QUEUE),
    "server_ip": (Stage.CONNECT, Stage.POST_QUEUE),
    "server_port": (Stage.CONNECT, Stage.POST_QUEUE),
    "server_name": (Stage.CONNECT, Stage.POST_QUEUE),
    "auth": (Stage.CONNECT, Stage.POST_QUEUE),
    "helo": (Stage.HELO, Stage.POST_QUEUE),
    "improper_pipelining": (Stage.CONNECT, Stage.PRE_QUEUE),
    "sender": (Stage.MAIL_FROM, Stage.DELIVERY_FAILURE),
    "message_id": (Stage.MAIL_FROM, Stage.DELIVERY_FAILURE),
    "recipients": (Stage.MAIL_FROM, Stage.POST_QUEUE),
    "rcpt": (Stage.RCPT_TO, Stage.RCPT_TO),
    "body": (Stage.PRE_QUEUE, Stage.POST_QUEUE),
    **dict.fromkeys(("recipient", "reply", "bounce", "attempt", "age"),
                    (Stage.DELIVERY_FAILURE, Stage.DELIVERY_FAILURE)),
}
READER = load("".join(
    f"fn read_{name}(ctx) {{ try {{ return [\"ok\", ctx.{name}]; }} "
    f"catch (e) {{ return [\"error\", e]; }} }}\n" for name in PROPERTIES))


@pytest.mark.parametrize("stage", list(Stage), ids=[s.name for s in Stage])
@pytest.mark.parametrize("name", list(PROPERTIES))
def test_property_availability(name, stage):
    first, last = PROPERTIES[name]
    outcome, value = READER.call(f"read_{name}", session(stage))
    if stage < first:
        assert (outcome, value) == ("error", f"ctx.{name} is not available before "
                                             f"{first.function}")
    elif stage > last:
        assert (outcome, value) == ("error", f"ctx.{name} is not available after "
                                             f"{last.function}")
    else:
        assert outcome == "ok", value


def test_property_values():
    ctx = session(Stage.RCPT_TO)
    script = load("""\
        fn stage(ctx) {
            [ctx.client_ip, ctx.client_port, ctx.server_ip, ctx.server_port, ctx.server_name,
             ctx.helo, ctx.auth, type_of(ctx.sender), ctx.sender.to_string(),
             ctx.rcpt.to_string(), ctx.recipients.len(), type_of(ctx.message_id),
             ctx.is_secured(), ctx.is_authenticated(), type_of(ctx)]
        }
    """)
    assert script.call("stage", ctx) == [
        "192.0.2.1", 4242, "192.0.2.25", 25, "mx.example", "client.example", None,
        "mailbox", "alice@a.example", "bob@b.example", 1, "string", False, False, "ctx"]
    assert re.fullmatch(r"[0-9a-f]{32}", ctx.message_id)


def test_body_is_the_decoded_body():
    assert run("ctx.body", session()) == "Hi Bob,\r\ncafé\r\n"
    assert run("ctx.body", session(data=b"A: 1\r\n\r\n\xff")) == "\ufffd"


def test_helo_is_unit_when_never_set():
    ctx = session(Stage.MAIL_FROM)
    ctx.helo = None
    assert run("ctx.helo", ctx) is None


def test_unknown_property_is_an_error():
    assert error("ctx.sendr", session()) == "ctx has no property 'sendr'"


def test_tls_and_auth():
    ctx = session(Stage.AUTH)
    ctx.tls = True
    ctx.set_auth("PLAIN", "bob")
    assert run("[ctx.is_secured(), ctx.is_authenticated(), ctx.auth.mechanism, ctx.auth.authid,"
               " ctx.auth.to_string()]", ctx) == [
        True, True, "PLAIN", "bob", '#{"mechanism": "PLAIN", "authid": "bob"}']
    assert error('ctx.auth.authid = "admin"', ctx) == "cannot modify a constant map"
    assert ctx.auth["authid"] == "bob"
    ctx.auth = None
    assert run("[ctx.auth, ctx.is_authenticated()]", ctx) == [None, False]


# ---- Mailbox in scripts ------------------------------------------------------------------

def test_mailbox_in_scripts():
    ctx = session(Stage.RCPT_TO)
    assert run("""
        let s = ctx.sender;
        [s.local_part, s.domain, s.is_null(), `${s}`, s == "alice@A.EXAMPLE",
         s == "Alice@a.example", "alice@a.example" == s, s != "x@y.example", s == ctx.sender,
         s == ctx.rcpt, s in ["x@y.example", "alice@a.example"], "bob@b.example" in ctx.recipients,
         ctx.recipients.contains("BOB@b.example"), ctx.recipients.index_of("bob@B.example"),
         s == 1, s == (), type_of(s), s.to_debug()]
    """, ctx) == ["alice", "a.example", False, "alice@a.example", True, False, True, True, True,
                  False, True, True, False, 0, False, False, "mailbox", "alice@a.example"]


def test_null_sender_prints_as_angle_brackets_and_equals_empty_string():
    ctx = session(Stage.MAIL_FROM)
    ctx.begin_transaction(Mailbox.parse(""))
    assert run('[ctx.sender.is_null(), `${ctx.sender}`, ctx.sender == "", ctx.sender == "<>",'
               ' ctx.sender.local_part, ctx.sender.domain]', ctx) == [
        True, "<>", True, True, "", ""]


def test_recipients_cannot_be_changed_as_an_array():
    ctx = session(Stage.RCPT_TO)
    assert error('ctx.recipients.push("x@y.example")', ctx) == "cannot modify a constant array"
    assert error("ctx.recipients.clear()", ctx) == "cannot modify a constant array"
    assert ctx.recipients == [Mailbox.parse("bob@b.example")]


def test_mailbox_exposes_only_its_props():
    ctx = session(Stage.MAIL_FROM)
    assert error("ctx.sender.address", ctx) == "mailbox has no property 'address'"
    assert error("ctx.sender._key", ctx) == "mailbox has no property '_key'"
    assert error('ctx.sender.domain = "evil.example"', ctx) == \
        "cannot set property 'domain' on mailbox"


# ---- methods, stage by stage -------------------------------------------------------------

READ, EDIT = (Stage.PRE_QUEUE, Stage.DELIVERY_FAILURE), (Stage.PRE_QUEUE, Stage.PRE_QUEUE)
ENVELOPE, ALWAYS = (Stage.MAIL_FROM, Stage.PRE_QUEUE), (Stage.CONNECT, Stage.DELIVERY_FAILURE)
SESSION = (Stage.CONNECT, Stage.POST_QUEUE)
METHODS = {  # call -> the stages where it works
    "ctx.is_secured()": SESSION,
    "ctx.is_authenticated()": SESSION,
    'ctx.store("k", 1)': ALWAYS,
    'ctx.get("k")': ALWAYS,
    'ctx.get_header("Subject")': READ,
    "ctx.get_all_headers()": READ,
    'ctx.has_header("Subject")': READ,
    'ctx.count_header("Subject")': READ,
    'ctx.append_header("X-A", "1")': EDIT,
    'ctx.prepend_header("X-A", "1")': EDIT,
    'ctx.set_header("X-A", "1")': EDIT,
    'ctx.rename_header("X-Tag", "X-Old")': EDIT,
    'ctx.remove_header("X-Tag")': EDIT,
    'ctx.rewrite_mail_from("new@a.example")': ENVELOPE,
    'ctx.rewrite_rcpt("bob@b.example", "robert@b.example")': ENVELOPE,
    'ctx.add_rcpt("carol@c.example")': ENVELOPE,
    'ctx.remove_rcpt("bob@b.example")': ENVELOPE,
    'ctx.bcc("archive@mx.example")': ENVELOPE,
}


@pytest.mark.parametrize("stage", list(Stage), ids=[s.name for s in Stage])
@pytest.mark.parametrize("call", list(METHODS))
def test_method_availability(call, stage):
    first, last = METHODS[call]
    name = call.split("(")[0]
    outcome = error(call, session(stage))
    if stage < first:
        assert outcome == f"{name}() is not available before {first.function}"
    elif stage > last:
        assert outcome == f"{name}() is not available after {last.function}"
    else:
        assert outcome == "no error"


def test_method_arity_is_checked():
    assert error("ctx.get_header()", session()) == \
        "method 'get_header' takes 1 argument(s), not 0"
    assert error('ctx.store("a", 1, 2)', session()) == \
        "method 'store' takes 1 to 2 argument(s), not 3"


def test_linter_knows_ctx_methods():
    names = ["is_secured", "is_authenticated", "get_header", "get_all_headers", "has_header",
             "count_header", "append_header", "prepend_header", "set_header", "rename_header",
             "remove_header", "rewrite_mail_from", "rewrite_rcpt", "add_rcpt", "remove_rcpt",
             "bcc", "store", "get", "is_null"]
    assert set(names) <= ENGINE.native_methods
    with pytest.raises(VslSyntaxError, match="unknown method 'get_headr'.*get_header"):
        load("fn on_pre_queue(ctx) { ctx.get_headr(\"x\") }")


# ---- headers -----------------------------------------------------------------------------

def test_reading_headers():
    assert run("""
        [ctx.get_header("subject"), ctx.get_header("SUBJECT"), ctx.get_header("Missing"),
         ctx.get_header("x-TAG"), ctx.get_all_headers("X-Tag"), ctx.get_all_headers("none"),
         ctx.has_header("from"), ctx.has_header("Cc"), ctx.count_header("X-TAG"),
         ctx.count_header("Cc"), ctx.get_header("Received")]
    """, session()) == [
        "hello", "hello", "", "one", ["one", "two"], [], True, False, 2, 0,
        "from client.example by mx.example;\tTue, 1 Jan 2030 00:00:00 +0000"]


def test_get_all_headers_without_a_name():
    assert run("ctx.get_all_headers()", session()) == [
        "Received: from client.example by mx.example;\tTue, 1 Jan 2030 00:00:00 +0000",
        "From: Alice <alice@a.example>", "To: bob@b.example", "Subject: hello",
        "X-Tag: one", "x-tag: two"]


def test_header_edits_are_byte_exact():
    ctx = session()
    assert run("""
        ctx.prepend_header("Received", "from mx.example by mx2.example; now");
        ctx.append_header("X-Spam", "no");
        ctx.set_header("subject", "[ok] hello");
        [ctx.rename_header("x-tag", "X-Old-Tag"), ctx.remove_header("To"),
         ctx.remove_header("To"), ctx.rename_header("Missing", "X-Other"),
         ctx.get_header("Subject"), ctx.count_header("x-old-tag")]
    """, ctx) == [True, True, False, False, "[ok] hello", 2]
    assert ctx.message.to_bytes() == (
        b"Received: from mx.example by mx2.example; now\r\n"
        b"Received: from client.example by mx.example;\r\n"
        b"\tTue, 1 Jan 2030 00:00:00 +0000\r\n"
        b"From: Alice <alice@a.example>\r\n"
        b"Subject: [ok] hello\r\n"
        b"X-Old-Tag: one\r\n"
        b"X-Old-Tag: two\r\n"
        b"X-Spam: no\r\n"
        b"\r\n"
        b"Hi Bob,\r\ncaf\xc3\xa9\r\n")


def test_set_header_appends_when_absent():
    ctx = session()
    run('ctx.set_header("X-New", "v")', ctx)
    assert ctx.message.to_bytes().endswith(b"x-tag: two\r\nX-New: v\r\n\r\nHi Bob,\r\n"
                                           b"caf\xc3\xa9\r\n")


@pytest.mark.parametrize("call, pattern", [
    ('ctx.append_header("X-Evil", "a\\r\\nBcc: evil@x.example")', "line break"),
    ('ctx.prepend_header("X-Evil", "a\\nBcc: evil@x.example")', "line break"),
    ('ctx.set_header("Subject", "a\\r\\n\\r\\nfake body")', "line break"),
    ('ctx.append_header("X-Evil", "a\\0b")', "control character"),
    ('ctx.append_header("X Evil", "v")', "not a header name"),
    ('ctx.append_header("X-Evil:", "v")', "not a header name"),
    ('ctx.append_header("Bcc\\r\\nX", "v")', "not a header name"),
    ('ctx.rename_header("Subject", "Sub ject")', "not a header name"),
    ('ctx.append_header("", "v")', "not a header name"),
    ('ctx.append_header(1, "v")', "not a header name"),
    ('ctx.append_header("X-A", 1)', "must be a string"),
    ('ctx.get_header(1)', "must be a string"),
    ('ctx.append_header("X-A", "' + "y" * 1000 + '")', "998"),
])
def test_bad_header_edits_are_catchable_errors(call, pattern):
    ctx = session()
    assert re.search(pattern, error(call, ctx))
    assert ctx.message.to_bytes() == MESSAGE


def test_folded_value_from_a_script():
    ctx = session()
    run('ctx.append_header("X-Folded", "a,\\r\\n b")', ctx)
    assert b"X-Folded: a,\r\n b\r\n\r\n" in ctx.message.to_bytes()
    assert run('ctx.get_header("x-folded")', ctx) == "a, b"


def test_header_methods_need_a_message():
    ctx = session()
    ctx.message = None
    assert error('ctx.get_header("Subject")', ctx) == "no message has been received"
    assert error("ctx.body", ctx) == "no message has been received"


# ---- envelope ----------------------------------------------------------------------------

def test_rewrite_mail_from():
    ctx = session(Stage.MAIL_FROM)
    run('ctx.rewrite_mail_from("<bounces@a.example>")', ctx)
    assert ctx.sender.address == "bounces@a.example"
    run('ctx.rewrite_mail_from("")', ctx)
    assert ctx.sender.is_null()
    ctx.stage = Stage.RCPT_TO
    ctx.add_recipient(Mailbox.parse("bob@b.example"))
    run("ctx.rewrite_mail_from(ctx.rcpt)", ctx)
    assert ctx.sender.address == "bob@b.example"
    assert error('ctx.rewrite_mail_from("not an address")', ctx) == \
        '"not an address" is not an address (no \'@\')'
    assert error("ctx.rewrite_mail_from(42)", ctx) == "an address must be a string, not 42"
    assert ctx.sender.address == "bob@b.example"


def test_rewrite_rcpt_replaces_in_place_and_follows_the_current_rcpt():
    ctx = session(Stage.RCPT_TO)
    ctx.add_recipient(Mailbox.parse("carol@c.example"))
    assert run("""
        [ctx.rewrite_rcpt("carol@C.example", "caroline@c.example"), ctx.rcpt.to_string(),
         ctx.rewrite_rcpt("nobody@x.example", "z@x.example"), ctx.recipients.map(|r| `${r}`)]
    """, ctx) == [True, "caroline@c.example", False, ["bob@b.example", "caroline@c.example"]]
    assert run('ctx.rewrite_rcpt("caroline@c.example", "bob@b.example")', ctx) is True
    assert [r.address for r in ctx.recipients] == ["bob@b.example"]  # merged, not doubled
    assert run('ctx.rewrite_rcpt("bob@b.example", "bob@B.EXAMPLE")', ctx) is True
    assert [r.address for r in ctx.recipients] == ["bob@B.EXAMPLE"]


def test_add_and_remove_rcpt():
    ctx = session(Stage.PRE_QUEUE)
    assert run("""
        [ctx.add_rcpt("carol@c.example"), ctx.add_rcpt("CAROL@c.example"),
         ctx.add_rcpt("carol@C.EXAMPLE"), ctx.remove_rcpt("bob@b.example"),
         ctx.remove_rcpt("bob@b.example"), ctx.recipients.map(|r| r.to_string())]
    """, ctx) == [True, True, False, True, False, ["carol@c.example", "CAROL@c.example"]]


@pytest.mark.parametrize("call", ['ctx.add_rcpt("")', 'ctx.add_rcpt("<>")', 'ctx.bcc("")',
                                  'ctx.rewrite_rcpt("bob@b.example", "<>")',
                                  'ctx.remove_rcpt("")'])
def test_null_recipient_is_refused(call):
    ctx = session()
    assert error(call, ctx) == "a recipient cannot be the null address <>"
    assert [r.address for r in ctx.all_recipients()] == ["bob@b.example"]


def test_bcc_recipients_are_hidden_but_delivered():
    ctx = session()
    assert run("""
        [ctx.bcc("archive@mx.example"), ctx.bcc("archive@MX.example"),
         ctx.bcc("bob@b.example"), ctx.recipients.len(), "archive@mx.example" in ctx.recipients]
    """, ctx) == [True, False, False, 1, False]
    assert [r.address for r in ctx.all_recipients()] == ["bob@b.example", "archive@mx.example"]
    run('ctx.add_rcpt("archive@mx.example")', ctx)
    assert [r.address for r in ctx.all_recipients()] == ["bob@b.example", "archive@mx.example"]


def test_invalid_addresses_in_envelope_edits_are_catchable():
    ctx = session()
    for call in ['ctx.add_rcpt("bob")', 'ctx.bcc("a b@c.example")',
                 'ctx.rewrite_rcpt("bob@b.example", "x@-bad.example")',
                 'ctx.remove_rcpt("a@b.example\\r\\nDATA")', "ctx.add_rcpt(#{})"]:
        assert "address" in error(call, ctx), call
    assert [r.address for r in ctx.all_recipients()] == ["bob@b.example"]


# ---- the server's side of the envelope ---------------------------------------------------

def test_server_recipient_flow():
    ctx = session(Stage.MAIL_FROM)
    ctx.stage = Stage.RCPT_TO
    bob, carol = Mailbox.parse("bob@b.example"), Mailbox.parse("carol@c.example")
    ctx.add_recipient(bob)
    ctx.add_recipient(carol)
    ctx.drop_recipient()  # on_rcpt_to refused carol
    assert ctx.recipients == [bob] and ctx.rcpt is carol
    ctx.add_recipient(Mailbox.parse("bob@B.example"))  # a duplicate
    ctx.drop_recipient()  # refusing the duplicate keeps the accepted one
    assert ctx.recipients == [bob]


def test_drop_recipient_after_a_rewrite():
    ctx = session(Stage.RCPT_TO)
    ctx.add_recipient(Mailbox.parse("carol@c.example"))
    run('ctx.rewrite_rcpt(ctx.rcpt, "caroline@c.example")', ctx)
    ctx.drop_recipient()
    assert [r.address for r in ctx.recipients] == ["bob@b.example"]


def test_reset_and_new_transactions():
    ctx = session(Stage.PRE_QUEUE)
    first_id = ctx.message_id
    run('ctx.bcc("archive@mx.example")', ctx)
    ctx.reset()
    assert (ctx.sender, ctx.rcpt, ctx.message, ctx.message_id) == (None, None, None, None)
    assert ctx.recipients == [] and ctx.all_recipients() == []
    assert ctx.helo == "client.example" and ctx.client_ip == "192.0.2.1"
    ctx.begin_transaction(Mailbox.parse("x@y.example"))
    assert ctx.message_id not in (None, first_id) and ctx.recipients == []


# ---- store and get -----------------------------------------------------------------------

class FakeIprev(NativeObject):
    vsl_type = "iprev_result"
    mechanism_name = "iprev"


class FakeSpf(NativeObject):
    vsl_type = "spf_result"
    mechanism_name = "spf"

    def __init__(self, identity: str):
        self.auth_key = f"spf_{identity}"


def test_store_and_get():
    ctx = session(Stage.CONNECT)
    assert run("""
        ctx.store("score", 5);
        ctx.store("tags", ["a"]);
        ctx.get("tags").push("b");
        ctx.store("unit", ());
        [ctx.get("score"), ctx.get("tags"), ctx.get("missing"), ctx.get("unit")]
    """, ctx) == [5, ["a", "b"], None, None]
    assert ctx.stored() == {"score": 5, "tags": ["a", "b"], "unit": None}
    ctx.stored()["score"] = 6
    assert ctx.stored()["score"] == 5


def test_store_results_by_auth_key_or_mechanism_name():
    ctx = session(Stage.CONNECT)
    iprev, helo, mail = FakeIprev(), FakeSpf("helo"), FakeSpf("mailfrom")
    script = load("fn keep(ctx, r) { ctx.store(r); }\nfn read(ctx, k) { ctx.get(k) }")
    for result in (iprev, helo, mail):
        script.call("keep", ctx, result)
    assert ctx.stored() == {"iprev": iprev, "spf_helo": helo, "spf_mailfrom": mail}
    assert script.call("read", ctx, "spf_helo") is helo


@pytest.mark.parametrize("call, pattern", [
    ('ctx.store("just a value")', r"needs a result .* use store\(key, value\)"),
    ("ctx.store(42)", r"needs a result"),
    ('ctx.store(status::next())', r"needs a result"),
    ('ctx.store(1, "v")', r"store key must be a non-empty string, not 1"),
    ('ctx.store("", "v")', r"store key must be a non-empty string"),
    ("ctx.get(1)", r"store key must be a non-empty string"),
])
def test_store_errors(call, pattern):
    assert re.search(pattern, error(call, session()))


def test_session_values_outlive_transactions():
    ctx = session(Stage.HELO)
    run('ctx.store("iprev", "pass"); ctx.store("kept", 1);', ctx)
    ctx.stage = Stage.MAIL_FROM
    ctx.begin_transaction(Mailbox.parse("a@b.example"))
    run('ctx.store("tx", 2); ctx.store("kept", 99);', ctx)
    assert ctx.stored() == {"iprev": "pass", "kept": 99, "tx": 2}
    ctx.begin_transaction(Mailbox.parse("c@d.example"))  # a new MAIL FROM ends the first
    assert ctx.stored() == {"iprev": "pass", "kept": 1}
    run('ctx.store("tx", 3);', ctx)
    ctx.reset()
    assert ctx.stored() == {"iprev": "pass", "kept": 1}
    ctx.reset()
    assert ctx.stored() == {"iprev": "pass", "kept": 1}


# ---- the sandbox -------------------------------------------------------------------------

@pytest.mark.parametrize("expr, pattern", [
    ("ctx.message", r"ctx has no property 'message'"),
    ("ctx.stage", r"ctx has no property 'stage'"),
    ("ctx.tls", r"ctx has no property 'tls'"),
    ("ctx._data", r"ctx has no property '_data'"),
    ("ctx.bcc_recipients", r"ctx has no property 'bcc_recipients'"),
    ("ctx.__dict__", r"ctx has no property '__dict__'"),
    ("ctx.vsl_props", r"ctx has no property 'vsl_props'"),
    ("ctx.get_header", r"ctx has no property 'get_header'"),
    ("ctx.reset()", r"unknown method 'reset'|has no method 'reset'"),
    ("ctx.stored()", r"unknown method 'stored'|has no method 'stored'"),
    ('ctx.set_auth("PLAIN", "root")', r"unknown method 'set_auth'|has no method 'set_auth'"),
    ("ctx.all_recipients()", r"unknown method 'all_recipients'|has no method"),
    ("ctx.drop_recipient()", r"unknown method 'drop_recipient'|has no method"),
    ("ctx.vsl_get(\"stage\")", r"unknown method 'vsl_get'|has no method"),
    ("ctx._check_stage(\"x\", 1)", r"unknown method '_check_stage'|has no method"),
    ('ctx.begin_transaction("a@b.example")', r"unknown method|has no method"),
    ("ctx.sender.is_null.__func__", r"mailbox has no property 'is_null'"),
    ('ctx.helo = "evil.example"', r"cannot set property 'helo' on ctx"),
    ('ctx.stage = 1', r"cannot set property 'stage' on ctx"),
])
def test_ctx_hides_everything_but_its_interface(expr, pattern):
    ctx = session()
    try:
        message = error(expr, ctx)
    except VslError as static:
        message = static.message
    assert re.search(pattern, message), message
    assert ctx.helo == "client.example" and ctx.stage is Stage.PRE_QUEUE


def test_indexing_reads_only_the_store():
    ctx = session()
    assert run('ctx.store("k", 1); [ctx["k"], ctx["__dict__"], ctx["helo"]]', ctx) == \
        [1, None, None]


def test_errors_are_script_errors_from_python_too():
    ctx = session(Stage.HELO)
    with pytest.raises(ScriptError, match="not available before on_pre_queue"):
        ctx.append_header("X-A", "1")
    with pytest.raises(ScriptError, match="not available before on_mail_from"):
        ctx.vsl_get("sender")
