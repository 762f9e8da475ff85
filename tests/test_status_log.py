"""status:: results with their reply checks, and the global log()/print() natives."""
from __future__ import annotations

import logging

import pytest

from vsl.stdlib import new_engine
from vsl.errors import Pos, ScriptError, VslSyntaxError


def status(expr: str):
    return new_engine().load_source(f"fn f() {{ {expr} }}", "status.vsl").call("f")


@pytest.mark.parametrize("expr, kind, reply", [
    ("status::next()", "next", None),
    ("status::accept()", "accept", None),
    ('status::accept("250 2.0.0 fine")', "accept", "250 2.0.0 fine"),
    ('status::faccept("250 ok")', "faccept", "250 ok"),
    ("status::deny()", "deny", "554 5.7.1 Transaction rejected by policy"),
    ('status::deny("451 4.7.1 Try later")', "deny", "451 4.7.1 Try later"),
    ('status::deny("550-5.7.1 first\\n550 5.7.1 second")', "deny",
     "550-5.7.1 first\n550 5.7.1 second"),
    ('status::deny("550 no enhanced code")', "deny", "550 no enhanced code"),
])
def test_statuses(expr, kind, reply):
    result = status(expr)
    assert (result.kind, result.reply) == (kind, reply)


def test_quarantine():
    result = status('status::quarantine("virus")')
    assert (result.kind, result.queue) == ("quarantine", "virus")


@pytest.mark.parametrize("expr, message", [
    ('status::deny("250 ok")', "not 4xx or 5xx"),
    ('status::deny("550 4.7.1 mismatch")', "does not match reply code 550"),
    ('status::accept("550 no")', "not 2xx"),
    ('status::deny("5xx nope")', "not an SMTP reply"),
    ('status::deny("550-5.7.1 a\\n551 5.7.1 b")', "same code"),
    ('status::deny(550)', "must be a string"),
    ('status::quarantine("../etc")', "queue name"),
    ('status::quarantine("")', "queue name"),
])
def test_bad_replies_are_catchable_errors(expr, message):
    # the argument goes through a variable: literal replies are already refused at load
    name, _, arg = expr.partition("(")
    with pytest.raises(ScriptError, match=message):
        status(f"let arg = {arg[:-1]}; {name}(arg)")


def test_literal_bad_replies_are_refused_at_load():
    with pytest.raises(VslSyntaxError, match="reply code 250 is not 4xx or 5xx"):
        status('status::deny("250 ok")')


ORIGINS = """\
fn helper() {
    status::deny("550 5.7.1 b")
}
fn f(x) {
    if x == 1 { return status::deny("550 5.7.1 a"); }
    if x == 2 { return helper(); }
    if x == 3 { let s = status::deny(); return s; }
    status::quarantine("q")
}
"""


@pytest.mark.parametrize("arg, position", [(1, (5, 24)), (2, (2, 5)), (3, (7, 25)),
                                           (4, (8, 5))])
def test_a_refusal_knows_the_call_that_made_it(arg, position):
    """status::deny and status::quarantine record where the script called them (the
    server logs it as who decided), not where the stage function is defined."""
    result = new_engine().load_source(ORIGINS, "origins.vsl").call("f", arg)
    assert result.origin == Pos("origins.vsl", *position)


def test_status_prints_and_compares():
    engine = new_engine()
    script = engine.load_source('fn f() { [`${status::deny("550 5.7.1 x")}`, '
                                'status::next() == status::next(), '
                                'status::next() == status::accept(), type_of(status::next())] }',
                                "s.vsl")
    assert script.call("f") == ["deny(550 5.7.1 x)", True, False, "status"]


def test_log_levels_and_topics(caplog):
    caplog.set_level(5)
    new_engine().load_source('log("info", "hello"); log("smtp", "error", `n=${1 + 1}`); '
                             'log("debug", [1, 2]);', "log.vsl")
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records
               if r.name.startswith("vsl.script")]
    assert records == [("vsl.script.app", logging.INFO, "hello"),
                       ("vsl.script.smtp", logging.ERROR, "n=2"),
                       ("vsl.script.app", logging.DEBUG, "[1, 2]")]


def test_bad_log_level_is_an_error():
    with pytest.raises(ScriptError, match="unknown log level"):
        new_engine().load_source('let level = "loud"; log(level, "x");', "log.vsl")


def test_print_writes_the_display_form(capsys):
    new_engine().load_source('print(#{a: [1, "b"]}); print("plain");', "print.vsl")
    assert capsys.readouterr().out == '#{"a": [1, "b"]}\nplain\n'
