"""The session's hand-off to a worker (stdlib/support/handoff.py): every storable type comes
back exactly (type, properties, display, equality, sharing), the ctx at on_post_queue reads
the same before and after, results of the real natives give the same
Authentication-Results, and what cannot be carried or loaded is a HandoffError."""
from __future__ import annotations

import json
import math

import pytest

from vsl.stdlib import new_engine
from vsl.stdlib.arc import ArcResult
from vsl.stdlib.ctx import Stage
from vsl.stdlib.dkim import DkimResult, Signature
from vsl.stdlib.dmarc import DmarcResult
from vsl.stdlib.dnsbl import DnsblResult, DnsblScore, Zone, ZoneAnswer
from vsl.stdlib.greylist import GreylistResult
from vsl.stdlib.iprev import IprevResult
from vsl.stdlib.limit import LimitResult
from vsl.stdlib.spf import SpfResult
from vsl.stdlib.status import Status
from vsl.stdlib.support.bounce.model import Classification
from vsl.stdlib.support.handoff import _KNOWN, MAX_TEXT, HandoffError, dump, load
from vsl.stdlib.support.mail import NULL, HeaderLimits, Mailbox
from vsl.stdlib.support.result import BounceResult
from vsl.errors import LimitError
from vsl.values import MAX_NESTING, Closure, FrozenMap, NativeObject, display, equals
from tests.authdata import SIGNED_BODY, context, script
from tests.support.contexts import MESSAGE, session

SPF = SpfResult(value="fail", identity="mailfrom", domain="a.example", client_ip="192.0.2.1",
                helo="client.example", sender="alice@a.example", explanation="not allowed",
                mechanism="-all")
DKIM = DkimResult([Signature(b"d=a.example; s=s1; a=rsa-sha256; i=@a.example", "pass"),
                   Signature(b"d=b.example; s=s2; a=ed25519-sha256", "fail", "bad signature")])
DMARC = DmarcResult("fail", "a.example", "reject", spf_aligned=True)
DMARC.spf, DMARC.dkim = SPF, DKIM
ZEN, ALLOW = Zone("zen.example", weight=2.5), Zone("allow.example", weight=-1)
ANSWERS = [ZoneAnswer(ALLOW, "listed", ("127.0.0.2",)),
           ZoneAnswer(ZEN, "listed", ("127.0.0.2", "127.0.0.4"), "spam source")]

# name -> a value a script can store
VALUES = {
    "unit": None, "true": True, "int": 42, "i64 min": -2 ** 63, "i64 max": 2 ** 63 - 1,
    "float": 1.5, "whole float": 1.0, "negative zero": -0.0, "inf": math.inf,
    "-inf": -math.inf, "nan": math.nan, "string": "café\n\"x\"", "empty string": "",
    "array": [1, "a", [2.0, None]], "constant array": (1, ("x",)),
    "map": {"b": 1, "a": {"t": "ref", "v": 0}},  # keys in order; a map like a tagged value
    "constant map": FrozenMap(z=1, a=(2,)),
    "range": range(1, 5), "stepped range": range(10, 0, -3),
    "mailbox": Mailbox.parse('"a b"@Example.COM'), "null sender": NULL,
    "spf helo": SpfResult(value="pass", identity="helo", domain="client.example",
                          client_ip="192.0.2.1", helo="client.example",
                          sender="postmaster@client.example"),
    "spf mailfrom": SPF,
    "iprev": IprevResult("pass", "192.0.2.1", "client.example"),
    "iprev without name": IprevResult("permerror", "192.0.2.1", None),
    "dkim": DKIM, "dkim none": DkimResult([]), "dmarc": DMARC,
    "dmarc alone": DmarcResult("none", reason="no record"),
    "arc": ArcResult("pass", 2, "arc.example"),
    "dnsbl listed": DnsblResult("192.0.2.1", ANSWERS),
    "dnsbl pass": DnsblResult("192.0.2.1", [ZoneAnswer(ZEN, "pass")]),
    "dnsbl score": DnsblScore("192.0.2.1", ANSWERS),
    "greylist": GreylistResult("greylisted", 300),
    "limit": LimitResult("over", False, 0, 60),
    "bounce": BounceResult(Classification("mailbox_full", 0.93, False, "4.2.2", "552 full")),
    "results in a map": {"spf": SPF, "all": [DKIM, DMARC]},
}


def same(a, b) -> bool:
    """Whether ``b`` is ``a`` handed over: the same type, and the same value as scripts
    see it (display, ==, every property, nested values alike)."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return (math.isnan(a) and math.isnan(b)) or repr(a) == repr(b)
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) in (dict, FrozenMap):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, NativeObject):
        return display(a) == display(b) and equals(a, b) and equals(b, a) and all(
            same(a.vsl_get(name), b.vsl_get(name)) for name in a.vsl_props)
    return a == b


def handed_over(ctx, message: bytes = MESSAGE):
    """``ctx`` as a worker loads it, through JSON text as the broker carries it."""
    return load(json.loads(json.dumps(dump(ctx), allow_nan=False)), message)


def post_queue_ctx():
    """A ctx at on_post_queue with everything set that a hand-off carries."""
    ctx = session(Stage.PRE_QUEUE)
    ctx.tls, ctx.improper_pipelining = True, True
    ctx.set_auth("PLAIN", "alice")
    ctx.add_recipient(Mailbox.parse("carol@c.example"))
    ctx.bcc("archive@a.example")
    ctx.set_route("relay:[192.0.2.9]:2525")
    ctx.stage = Stage.RCPT_TO
    ctx.set_route("maildir", Mailbox.parse("carol@c.example"))
    ctx.stage = Stage.POST_QUEUE
    for name, value in VALUES.items():
        ctx.store(name, value)
    return ctx


@pytest.mark.parametrize("name", list(VALUES))
def test_every_storable_type_comes_back_the_same(name):
    ctx = session(Stage.POST_QUEUE)
    ctx.store(name, VALUES[name])
    assert same(VALUES[name], handed_over(ctx).get(name))


@pytest.mark.parametrize("tag", list(_KNOWN))
def test_the_table_holds_every_attribute_of_its_objects(tag):
    cls, fields = _KNOWN[tag]
    examples = [v for v in [*VALUES.values(), *DKIM.checks] if type(v) is cls]
    assert examples and all(set(vars(v)) == set(fields) for v in examples)


def test_the_context_reads_the_same_at_post_queue():
    ctx = post_queue_ctx()
    loaded = handed_over(ctx)
    assert loaded.stage == Stage.POST_QUEUE
    for name in ("client_ip", "client_port", "server_ip", "server_port", "server_name",
                 "auth", "helo", "sender", "message_id", "recipients", "body"):
        assert same(ctx.vsl_get(name), loaded.vsl_get(name)), name
    for attribute in ("tls", "improper_pipelining", "bcc_recipients", "route_all"):
        assert same(getattr(ctx, attribute), getattr(loaded, attribute)), attribute
    assert loaded.is_secured() and loaded.is_authenticated()
    assert loaded.all_recipients() == ctx.all_recipients()
    assert [loaded.route_for(r) for r in ctx.all_recipients()] == \
        ["relay:[192.0.2.9]:2525", "maildir", "relay:[192.0.2.9]:2525"]
    assert same(ctx.stored(), loaded.stored())
    assert loaded.get_all_headers() == ctx.get_all_headers()
    assert loaded.message.to_bytes() == MESSAGE


def test_a_script_at_post_queue_sees_the_same():
    reader = new_engine().load_source(
        "fn read(ctx) { [ctx.client_ip, ctx.server_port, ctx.helo, ctx.auth, ctx.sender,"
        " ctx.recipients, ctx.is_secured(), ctx.get(\"dmarc\").spf.explanation,"
        " ctx.get(\"dnsbl score\").results, `${ctx.get(\"dkim\")}`, ctx.body,"
        " ctx.get_header(\"Subject\"), type_of(ctx.get(\"limit\")), ctx.get(\"nan\")] }",
        "reader.vsl")
    ctx = post_queue_ctx()
    assert same(reader.call("read", ctx), reader.call("read", handed_over(ctx)))


def test_shared_arrays_stay_shared_and_small():
    ctx, part = session(Stage.POST_QUEUE), [1]
    tree = [part, part]
    for _ in range(60):  # 2**60 leaves, as a loop of a script can make
        tree = [tree, tree]
    looped = {"name": "self"}
    looped["self"] = looped
    ctx.store("tree", tree)
    ctx.store("looped", looped)
    assert len(json.dumps(dump(ctx))) < 10_000
    loaded = handed_over(ctx)
    tree = loaded.get("tree")
    assert tree[0] is tree[1] and tree[0][0] is tree[1][1]
    assert loaded.get("looped")["self"] is loaded.get("looped")


def test_a_value_nested_as_deep_as_scripts_can_print_comes_back():
    ctx, deep = session(Stage.POST_QUEUE), 1
    for level in range(MAX_NESTING):  # each kind of container in turn
        deep = [[deep], (deep,), {"a": deep}, FrozenMap(a=deep)][level % 4]
    display(deep)
    ctx.store("deep", deep)
    assert same(deep, handed_over(ctx).get("deep"))
    with pytest.raises(LimitError):
        display([deep])
    ctx = session(Stage.POST_QUEUE)
    ctx.store("deeper", {"a": deep})
    with pytest.raises(HandoffError, match="store key 'deeper': a value nested more than "
                                           f"{MAX_NESTING} levels deep cannot be handed"):
        dump(ctx)


def test_strings_shared_beyond_the_bound_are_an_error():
    ctx = session(Stage.POST_QUEUE)
    ctx.store("a", "x" * (MAX_TEXT // 2))
    ctx.store("b", {"x" * (MAX_TEXT // 4): "y"})
    assert len(handed_over(ctx).get("a")) == MAX_TEXT // 2
    ctx.store("c", ["x" * 1_000_000] * 100_000)  # one string, within the script's limits
    with pytest.raises(HandoffError, match=f"store key 'c': a value whose strings add up "
                                           f"to more than {MAX_TEXT} characters cannot be"):
        dump(ctx)


@pytest.mark.parametrize("value, kind", [
    (Status("accept"), "status"),
    (Closure(lambda: 1, 0), "Fn"),
    (object(), "object"),
    ({"inner": [1, session()]}, "ctx"),
])
def test_a_value_that_cannot_be_carried_is_an_error(value, kind):
    ctx = session(Stage.POST_QUEUE)
    ctx.store("k", value)
    with pytest.raises(HandoffError) as caught:
        dump(ctx)
    assert str(caught.value) == f"store key 'k': a {kind} cannot be handed to a worker"


KEEPER = """
const C = #{ list: [1, 2], name: "c" };
fn keep(ctx) {
    let a = [1, "two", 3.0, ()];
    ctx.store("values", [a, a, #{ z: 1, a: true }, global::C, 1..4, ctx.sender]);
}
fn read(ctx) {
    let v = ctx.get("values");
    v[0].push("more");  // the same array as v[1]
    let errors = [];
    try { v[3].name = "x" } catch (e) { errors.push(e) }
    [v, type_of(v[2]), type_of(v[4]), errors]
}
fn keep_closure(ctx) { ctx.store("f", |x| x + 1) }
fn keep_resolver(ctx) { ctx.store("r", dns::resolver(#{ nameservers: ["127.0.0.1:53"] })) }
"""


def test_what_a_script_stored_reads_the_same_in_the_worker():
    keeper = new_engine().load_source(KEEPER, "keeper.vsl")
    ctx = session(Stage.PRE_QUEUE)
    keeper.call("keep", ctx)
    ctx.stage = Stage.POST_QUEUE
    loaded = handed_over(ctx)
    assert same(keeper.call("read", ctx), keeper.call("read", loaded))


@pytest.mark.parametrize("function, kind", [("keep_closure", "Fn"),
                                            ("keep_resolver", "dns_resolver")])
def test_what_a_script_cannot_hand_over(function, kind):
    ctx = session(Stage.PRE_QUEUE)
    new_engine().load_source(KEEPER, "keeper.vsl").call(function, ctx)
    with pytest.raises(HandoffError, match=f"store key '.': a {kind} cannot be handed"):
        dump(ctx)


NATIVES = """
fn check(port, ctx) {
    let r = resolver(port);
    ctx.store(iprev::check(#{ ip: ctx.client_ip, dns_resolver: r }));
    ctx.store(spf::check_host(#{ ip: ctx.client_ip, helo: ctx.helo, dns_resolver: r }));
    ctx.store(spf::check_host(#{ ip: ctx.client_ip, helo: ctx.helo, mail_from: ctx.sender,
                                 dns_resolver: r }));
    ctx.store(dkim::verify(ctx, #{ dns_resolver: r }));
    ctx.store(dmarc::check(ctx, #{ dns_resolver: r }));
    ctx.store(arc::verify(ctx, #{ dns_resolver: r }));
    ctx.store("dnsbl", dnsbl::check(#{ ip: "192.0.2.7", zones: ["bl.dnsbl.test"],
                                      dns_resolver: r }));
    ctx.store("score", dnsbl::score(#{ ip: "192.0.2.7", dns_resolver: r,
        zones: [#{ zone: "bl.dnsbl.test", weight: 2 }, "second.dnsbl.test"] }));
    ctx.store("limit", limit::hit("k", #{ rate: "1/1m" }));
    ctx.store("dkim_key", dkim::key("rsa2048.pem"));
}
fn sign(ctx) {
    dkim::sign(ctx, #{ sdid: "dkim.test", selector: "rsa", private_key: "rsa2048.pem" })
}
fn header(ctx) { auth::create_header(ctx, #{ auth_serv_id: "mx.example.test" }) }
"""


def test_results_of_the_natives_give_the_same_authentication_results(server):
    natives = script(NATIVES)
    ctx = context(SIGNED_BODY)
    natives.call("sign", ctx)
    natives.call("check", server.port, ctx)
    with pytest.raises(HandoffError, match="store key 'dkim_key': a dkim_key cannot"):
        dump(ctx)
    del ctx._data["dkim_key"]
    data = ctx.message.to_bytes()
    ctx.stage = Stage.POST_QUEUE
    loaded = handed_over(ctx, data)
    header = natives.call("header", ctx)
    assert "dkim=pass" in header and "dmarc=pass" in header and "iprev=" in header
    assert natives.call("header", loaded) == header
    assert same(ctx.stored(), loaded.stored())


def test_the_message_is_parsed_within_the_sessions_header_limits():
    ctx = session(Stage.POST_QUEUE)
    with pytest.raises(HandoffError, match="the message: .*"):
        load(dump(ctx), MESSAGE, HeaderLimits(fields=3))


def _dumped(**changes) -> dict:
    return {**dump(session(Stage.POST_QUEUE)), **changes}


def _store(value) -> dict:
    return _dumped(store={"k": value})


SPF_FIELDS = {"value": "pass", "identity": "helo", "domain": "d", "client_ip": "i",
              "helo": "h", "sender": "s", "explanation": "", "mechanism": "default"}

# what a worker may be handed -> what load says
GARBAGE = [
    ([], "a hand-off is a JSON object, not list"),
    (_dumped(v=2), r"hand-off format '2' is not 1 \(written by another vSL version\?\)"),
    ({"v": 1}, "a hand-off with the wrong keys: auth, bcc_recipients, client_ip"),
    (_dumped(extra=1), "a hand-off with the wrong keys: extra"),
    (_dumped(client_port="25"), "a hand-off's client_port cannot be str"),
    (_dumped(tls=1), "a hand-off's tls cannot be int"),
    (_dumped(recipients=["bob@b.example", 3]), "a hand-off's recipients cannot be list"),
    (_dumped(recipients=["not an address"]), r"recipients\[0\]: .* is not an address"),
    (_dumped(recipients=[""]), "recipients: a recipient cannot be the null address"),
    (_dumped(sender="a@"), "sender: .*not an address"),
    (_dumped(routes=[["bob@b.example"]]), "routes: not a list of"),
    (_dumped(auth="PLAIN"), "auth cannot be string"),
    (_dumped(store=[]), "a hand-off's store cannot be list"),
    (_dumped(store={"": 1}), "store: a store key must be a non-empty string"),
    (_store({"t": "closure", "v": 1}), r"store\['k'\]: not a value \(tag 'closure'\)"),
    (_store({"t": ["map"], "v": {}}), r"store\['k'\]: not a value \(dict\)"),
    (_store({"t": "f64", "v": ["inf"]}), r"not a value \(tag 'f64'\)"),
    (_store({"t": "map"}), r"store\['k'\]: not a value \(dict\)"),
    (_store({"t": "map", "v": []}), r"store\['k'\]: a map of the wrong form"),
    (_store({"t": "f64", "v": "1e999"}), r"not a value \(tag 'f64'\)"),
    (_store({"t": "range", "v": [1, 2, 0]}), r"not a value \(tag 'range'\)"),
    (_store({"t": "ref", "v": 0}), r"a reference to no array or map \(0\)"),
    (_store({"t": "const_array", "v": [{"t": "ref", "v": 0}]}),
     r"store\['k'\]\[0\]: a reference to no array or map"),
    (_store(2 ** 63), "integer 9223372036854775808 out of range for i64"),
    (_store({"t": "mailbox", "v": "x"}), r"store\['k'\]: .*not an address"),
    (_store({"t": "spf_result", "v": {"value": "pass"}}),
     "a spf_result needs exactly value, identity, domain"),
    (_store({"t": "spf_result", "v": {**SPF_FIELDS, "helo": 1}}),
     r"store\['k'\]: a spf_result's helo cannot be i64"),
    (_store({"t": "dkim_result", "v": {"value": "pass", "checks": [1], "signatures": []}}),
     "a dkim_result's checks cannot be array"),
    (_store({"t": "dkim_signature", "v": {}}), r"not a value \(tag 'dkim_signature'\)"),
    (_store(json.loads("[" * 300 + "]" * 300)), "nested more than 200 levels deep"),
]


@pytest.mark.parametrize("data, error", GARBAGE, ids=[e for _, e in GARBAGE])
def test_garbage_is_a_handoff_error(data, error):
    with pytest.raises(HandoffError, match=error):
        load(data, MESSAGE)
