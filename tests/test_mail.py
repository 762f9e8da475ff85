"""The mail model: Mailbox (RFC 5321/6531 addresses) and Message (byte-exact headers)."""
from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsl.stdlib.support.mail import (NULL, AddressError, HeaderError, HeaderLimitError, HeaderLimits,
                         HopLimitError, Mailbox, Message)
from vsl.errors import ScriptError

FUZZ = settings(max_examples=300, deadline=None, database=None)


# ---- Mailbox -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, local, domain, address", [
    ("john@example.com", "john", "example.com", "john@example.com"),
    ("<john@example.com>", "john", "example.com", "john@example.com"),
    ("John.Doe+tag@Mail.Example.COM", "John.Doe+tag", "Mail.Example.COM",
     "John.Doe+tag@Mail.Example.COM"),
    ("!#$%&'*+/=?^_`{|}~-@x.example", "!#$%&'*+/=?^_`{|}~-", "x.example",
     "!#$%&'*+/=?^_`{|}~-@x.example"),
    ('"john doe"@example.com', "john doe", "example.com", '"john doe"@example.com'),
    ('"john"@example.com', "john", "example.com", "john@example.com"),
    ('"a\\"b\\\\c"@example.com', 'a"b\\c', "example.com", '"a\\"b\\\\c"@example.com'),
    ('"a@b"@example.com', "a@b", "example.com", '"a@b"@example.com'),
    ('"a..b"@example.com', "a..b", "example.com", '"a..b"@example.com'),
    ('""@example.com', "", "example.com", '""@example.com'),
    ("postmaster@localhost", "postmaster", "localhost", "postmaster@localhost"),
    ("user@[192.0.2.1]", "user", "[192.0.2.1]", "user@[192.0.2.1]"),
    ("user@[IPv6:2001:db8::1]", "user", "[IPv6:2001:db8::1]", "user@[IPv6:2001:db8::1]"),
    ("user@[ipv6:2001:DB8:0::1]", "user", "[ipv6:2001:DB8:0::1]", "user@[ipv6:2001:DB8:0::1]"),
    ("用户@例子.广告", "用户", "例子.广告", "用户@例子.广告"),
    ("jürgen@münchen.de", "jürgen", "münchen.de", "jürgen@münchen.de"),
    ('"ü ü"@x.example', "ü ü", "x.example", '"ü ü"@x.example'),
    ("a@123.example", "a", "123.example", "a@123.example"),
    ("a@xn--mnchen-3ya.de", "a", "xn--mnchen-3ya.de", "a@xn--mnchen-3ya.de"),
])
def test_parse_valid_addresses(text, local, domain, address):
    mailbox = Mailbox.parse(text)
    assert (mailbox.local_part, mailbox.domain, mailbox.address) == (local, domain, address)
    assert not mailbox.is_null()
    assert mailbox.vsl_display() == address
    assert Mailbox.parse(mailbox.address) == mailbox


@pytest.mark.parametrize("text", ["", "<>"])
def test_null_address(text):
    mailbox = Mailbox.parse(text)
    assert mailbox is NULL and mailbox.is_null()
    assert (mailbox.local_part, mailbox.domain, mailbox.address) == ("", "", "")
    assert mailbox.vsl_display() == "<>"
    assert mailbox.vsl_equals("") and mailbox.vsl_equals("<>")
    assert not mailbox.vsl_equals("a@b.example")


LONG_LABEL = "a" * 64
INVALID = [
    "john", "john@", "@example.com", "john@@example.com", "jo hn@example.com",
    ".john@example.com", "john.@example.com", "jo..hn@example.com", "john@example.com.",
    "john@.example.com", "john@exa..mple.com", "john@-example.com", "john@example-.com",
    "john@exa_mple.com", "john@exa mple.com", '"john@example.com', 'jo"hn"@example.com',
    '"a"b"@example.com', '"a\\"@example.com', "<john@example.com", "john@example.com>",
    "<<john@example.com>>", "john@[192.0.2.256]", "john@[192.0.2]", "john@[010.0.2.1]",
    "john@[IPv6:2001:db8::g]", "john@[2001:db8::1]", "john@[IPv6:fe80::1%eth0]",
    "john@[IPv4:192.0.2.1]", "john@[192.0.2.1", "john@192.0.2.1]", "john@[]",
    f"john@{LONG_LABEL}.example", "a" * 65 + "@example.com",
    "a@" + ".".join(["abcdefghi"] * 26), f"a@{'ü' * 60}.de",
    "john\r\n@example.com", "john@example.com\r\nRCPT TO:<evil@x>", "jo\x00hn@example.com",
    "john@exa\x7fmple.com", "jo\u00a0hn@example.com", "jo\u2028hn@example.com",
    "jo\ud800hn@example.com", "john@exam\u3000ple.com", "jo\x85hn@example.com",
    "john@example.com ", " john@example.com", '"a\tb"@example.com',
]


@pytest.mark.parametrize("text", INVALID)
def test_parse_invalid_addresses(text):
    with pytest.raises(AddressError) as info:
        Mailbox.parse(text)
    assert isinstance(info.value, ScriptError)


@pytest.mark.parametrize("value", [None, 3, ["a@b.example"]])
def test_parse_needs_a_string(value):
    with pytest.raises(AddressError, match="must be a string"):
        Mailbox.parse(value)


def test_length_limits_are_octets():
    assert Mailbox.parse("a" * 64 + "@example.com").local_part == "a" * 64
    with pytest.raises(AddressError, match="64 octets"):
        Mailbox.parse("ü" * 33 + "@example.com")  # 33 characters, 66 octets
    domain = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 octets
    assert Mailbox.parse(f"x@{domain}").domain == domain
    with pytest.raises(AddressError, match="too long"):
        Mailbox.parse(f"x@{domain}.cc.d")


@pytest.mark.parametrize("a, b", [
    ("john@example.com", "john@EXAMPLE.com"),
    ("john@Example.Com", "<john@example.com>"),
    ('"john"@example.com', "john@example.com"),
    ("a@münchen.de", "a@xn--mnchen-3ya.de"),
    ("a@MÜNCHEN.de", "a@münchen.de"),
    ("a@[IPv6:2001:db8::1]", "a@[ipv6:2001:DB8:0:0:0:0:0:1]"),
    ("a@[192.0.2.1]", "a@[192.0.2.1]"),
])
def test_equal_addresses(a, b):
    x, y = Mailbox.parse(a), Mailbox.parse(b)
    assert x == y and x.vsl_equals(b) and y.vsl_equals(a)
    assert hash(x) == hash(y)


@pytest.mark.parametrize("a, b", [
    ("john@example.com", "John@example.com"),  # local parts are case-sensitive
    ("john@example.com", "john@example.org"),
    ("a@[192.0.2.1]", "a@[192.0.2.2]"),
    ("a@[IPv6:::ffff:192.0.2.1]", "a@[192.0.2.1]"),
    ("john@example.com", "not an address"),
    ("john@example.com", ""),
])
def test_different_addresses(a, b):
    assert not Mailbox.parse(a).vsl_equals(b)


def test_mailbox_is_unequal_to_other_types():
    mailbox = Mailbox.parse("a@b.example")
    assert not mailbox.vsl_equals(None) and not mailbox.vsl_equals(["a@b.example"])
    assert mailbox in [Mailbox.parse("a@B.EXAMPLE")]


@st.composite
def address_like(draw):
    part = st.text(alphabet=st.sampled_from(list('ab.@"\\ -[]:<>1ü\r\n\t_')), max_size=12)
    return draw(part) + draw(st.sampled_from(["", "@", "@x.example", "@[192.0.2.1]"]))


@FUZZ
@given(st.one_of(st.text(max_size=40), address_like()))
def test_parse_is_total_and_canonical(text):
    """Any text is an AddressError or a mailbox whose address parses back to itself."""
    try:
        mailbox = Mailbox.parse(text)
    except AddressError:
        return
    again = Mailbox.parse(mailbox.address)
    assert again == mailbox and again.address == mailbox.address
    assert mailbox.vsl_equals(text)


# ---- Message: parsing --------------------------------------------------------------------

SAMPLE = (b"Received: from a.example by mx.example;\r\n\tTue, 1 Jan 2030 00:00:00 +0000\r\n"
          b"From: Alice <alice@a.example>\r\n"
          b"To: bob@b.example,\r\n  carol@c.example\r\n"
          b"Subject: =?utf-8?q?caf=C3=A9?= \r\n"
          b"X-Empty:\r\n"
          b"x-dup: one\r\n"
          b"X-Dup : two\r\n"
          b"\r\n"
          b"Hello,\r\n\r\nX-Not-A-Header: body\r\n")


@pytest.mark.parametrize("data", [
    SAMPLE, b"", b"\r\n", b"\n", b"\r\n\r\n", b"Subject: x", b"Subject: x\r\n",
    b"Subject: x\r\n\r\n", b"no header at all\r\n\r\nbody", b"Subject: x\nFrom: y\n\nbody\n",
    b"Subject: x\r\nFrom: y\n\r\nmixed\r\n", b"Subject: x\r\ngarbage line\r\nTo: y\r\n",
    b" leading continuation\r\nSubject: x\r\n\r\nb", b"Subject: caf\xe9 \xff\xfe\r\n\r\n\xff",
    b"A: \x00nul\r\n\r\n", b"Subject: x\rold mac\rline\r", b"\x00\x01\x02",
    b"Subject: x\r\n \r\n\r\nbody", b"From user@x Tue Jan 1\r\nSubject: x\r\n\r\n",
    b":empty name\r\n\r\n", b"A:" + b"x" * 100_000 + b"\r\n\r\n" + b"y" * 100_000,
])
def test_parse_and_serialize_are_byte_exact(data):
    assert Message(data).to_bytes() == data


@pytest.mark.parametrize("limit", [0, 5, 12, 13, 14, 20, 1000])
def test_head_is_the_start_of_the_serialized_message(limit):
    message = Message(b"Subject: x\r\n\r\nbody text")
    message.prepend("X-Added", "y")
    assert message.head(limit) == message.to_bytes()[:limit]


def test_fields_and_values():
    message = Message(SAMPLE)
    assert message.fields() == [
        ("Received", "from a.example by mx.example;\tTue, 1 Jan 2030 00:00:00 +0000"),
        ("From", "Alice <alice@a.example>"),
        ("To", "bob@b.example,  carol@c.example"),
        ("Subject", "=?utf-8?q?caf=C3=A9?="),
        ("X-Empty", ""),
        ("x-dup", "one"),
        ("X-Dup", "two"),
    ]
    assert message.get("subject") == "=?utf-8?q?caf=C3=A9?="
    assert message.get("X-DUP") == "one"
    assert message.get_all("x-Dup") == ["one", "two"]
    assert message.get("Missing") is None and message.get_all("Missing") == []
    assert message.body_bytes == b"Hello,\r\n\r\nX-Not-A-Header: body\r\n"
    assert message.body == "Hello,\r\n\r\nX-Not-A-Header: body\r\n"


@pytest.mark.parametrize("data, names, body", [
    (b"", [], b""),
    (b"Subject: x", ["Subject"], b""),
    (b"no header\r\nSubject: x\r\n\r\nbody", [], b"no header\r\nSubject: x\r\n\r\nbody"),
    (b"Subject: x\r\ngarbage\r\nTo: y\r\n\r\nb", ["Subject"], b"garbage\r\nTo: y\r\n\r\nb"),
    (b" lead\r\nSubject: x\r\n", [], b" lead\r\nSubject: x\r\n"),
    (b"A: 1\nB: 2\n folded\n\nbody\n", ["A", "B"], b"body\n"),
    (b"A: 1\r\n\r\n\r\nbody", ["A"], b"\r\nbody"),
    (b"\xc3\xa9: x\r\n\r\n", [], b"\xc3\xa9: x\r\n\r\n"),
])
def test_robust_parse(data, names, body):
    message = Message(data)
    assert [name for name, _ in message.fields()] == names
    assert message.body_bytes == body


@pytest.mark.parametrize("limit, at_limit, error", [
    ({"fields": 3}, b"A: 1\r\nB: 2\r\nC: 3\r\n", "too many header fields"),
    ({"field_size": 20}, b"A: 1\r\nB: 456789012345\r\n \r\n", "a header field is too long"),
    ({"section_size": 30}, b"A: 1\r\nB: 4567890123456789012\r\n", "message header too big"),
    ({"received": 2}, b"Received: 1\r\nA: 2\r\nreceived: 3\r\n", "too many hops"),
])
def test_header_limits_hold_exactly(limit, at_limit, error):
    limits = HeaderLimits(**limit)
    over = at_limit + (b"Received: 4\r\n" if "received" in limit else b"X: y\r\n")
    if "field_size" in limit:
        over = at_limit + b" \r\n"  # one more folded line makes the field too long
    assert Message(at_limit + b"\r\nbody", limits).body_bytes == b"body"
    with pytest.raises(HeaderLimitError) as err:
        Message(over + b"\r\nbody", limits)
    assert str(err.value) == error
    assert isinstance(err.value, HopLimitError) == ("received" in limit)


def test_a_huge_header_is_refused_at_its_limit_without_reading_on():
    bomb = b"a:b\r\n" * 2_000_000
    with pytest.raises(HeaderLimitError, match="too many header fields"):
        Message(bomb)
    with pytest.raises(HeaderLimitError, match="a header field is too long"):
        Message(b"A: x\r\n" + b" folded\r\n" * 2_000_000)


def fastest_lookup(message: Message) -> float:
    timings = []
    for _ in range(50):
        start = time.perf_counter()
        message.get("Subject")
        timings.append(time.perf_counter() - start)
    return min(timings)


def test_lookups_cost_what_they_find_not_the_header_size():
    many = HeaderLimits(fields=100_000, section_size=10**7)
    big = Message(b"".join(b"X-%d: v\r\n" % i for i in range(50_000)) + b"Subject: s\r\n",
                  many)
    small = Message(b"X-1: v\r\nSubject: s\r\n")
    assert big.get("subject") == small.get("subject") == "s"
    assert fastest_lookup(big) < 10 * fastest_lookup(small) + 1e-5  # a scan: 1000 times


def test_the_name_index_follows_every_edit():
    message = Message(SAMPLE)
    message.prepend("X-Dup", "zero")
    message.append("x-DUP", "three")
    message.set("X-DUP", "ZERO")
    message.rename("From", "x-dup")
    message.remove("to")
    message.rename("x-dup", "X-Renamed")
    message.append("To", "new")
    for name in ("x-dup", "x-renamed", "from", "to", "received", "subject"):
        assert message.get_all(name) == [v for n, v in message.fields() if n.lower() == name]
    assert message.get_all("x-renamed") == ["ZERO", "Alice <alice@a.example>", "one", "two",
                                            "three"]


def test_body_decodes_with_replacement():
    message = Message(b"A: 1\r\n\r\ncaf\xc3\xa9 \xff")
    assert message.body == "café \ufffd"
    assert Message(b"Subject: caf\xe9\r\n\r\n").get("Subject") == "caf\ufffd"


# ---- Message: editing --------------------------------------------------------------------

HEAD, BODY = SAMPLE.split(b"\r\n\r\n", 1)


def edited(edit) -> bytes:
    message = Message(SAMPLE)
    edit(message)
    return message.to_bytes()


def test_append_adds_one_line_at_the_end_of_the_header():
    out = edited(lambda m: m.append("X-Spam", "yes"))
    assert out == HEAD + b"\r\nX-Spam: yes\r\n\r\n" + BODY


def test_prepend_adds_one_line_at_the_top():
    out = edited(lambda m: m.prepend("Received", "from x by y; now"))
    assert out == b"Received: from x by y; now\r\n" + SAMPLE


def test_set_replaces_only_the_first_field_keeping_its_spelling():
    out = edited(lambda m: m.set("X-DUP", "three"))
    assert out == SAMPLE.replace(b"x-dup: one\r\n", b"x-dup: three\r\n")
    out = edited(lambda m: m.set("X-New", "v"))
    assert out == HEAD + b"\r\nX-New: v\r\n\r\n" + BODY


def test_rename_keeps_the_values_byte_exact():
    message = Message(SAMPLE)
    assert message.rename("X-DUP", "X-Old-Dup") is True
    assert message.to_bytes() == SAMPLE.replace(b"x-dup: one", b"X-Old-Dup: one").replace(
        b"X-Dup : two", b"X-Old-Dup : two")
    assert message.rename("Missing", "Other") is False
    out = edited(lambda m: m.rename("to", "Original-To"))
    assert out == SAMPLE.replace(b"To: bob", b"Original-To: bob")


def test_remove_removes_every_field_of_that_name():
    message = Message(SAMPLE)
    assert message.remove("x-dup") is True
    assert message.to_bytes() == SAMPLE.replace(b"x-dup: one\r\nX-Dup : two\r\n", b"")
    assert message.remove("x-dup") is False
    assert message.remove("TO") is True
    assert b"carol" not in message.to_bytes()


def test_edits_keep_bare_lf_messages_in_their_style():
    message = Message(b"A: 1\nB: 2\n\nbody\n")
    message.append("C", "3")
    message.prepend("Z", "0")
    assert message.to_bytes() == b"Z: 0\nA: 1\nB: 2\nC: 3\n\nbody\n"


@pytest.mark.parametrize("data, expected", [
    (b"", b"X: 1\r\n"),
    (b"Subject: s", b"Subject: s\r\nX: 1\r\n"),
    (b"Subject: s\r\ngarbage\r\n", b"Subject: s\r\nX: 1\r\n\r\ngarbage\r\n"),
    (b" lead\r\n", b"X: 1\r\n\r\n lead\r\n"),
    (b"\r\nbody", b"X: 1\r\n\r\nbody"),
])
def test_appending_to_odd_messages_keeps_their_structure(data, expected):
    message = Message(data)
    message.append("X", "1")
    assert message.to_bytes() == expected
    again = Message(expected)
    assert again.fields() == message.fields() and again.body_bytes == message.body_bytes


def test_long_values_are_folded_and_unfold_back():
    value = " ".join(f"word{i:03d}" for i in range(60))
    message = Message(b"\r\n")
    message.append("X-Long", value)
    raw = message.to_bytes()
    lines = raw.split(b"\r\n")[:-2]
    assert len(lines) > 1 and all(len(line) <= 78 for line in lines)
    assert lines[0].startswith(b"X-Long: word000 ")
    assert all(line.startswith(b" ") for line in lines[1:])
    assert Message(raw).get("X-Long") == value


def test_folding_never_splits_a_word_or_makes_a_blank_line():
    word = "x" * 120
    message = Message(b"")
    message.append("X-Words", f"{word}  {word}\t{word}")
    lines = message.to_bytes().split(b"\r\n")[:-1]
    assert lines == [b"X-Words: " + word.encode(), b"  " + word.encode(), b"\t" + word.encode()]


def test_utf8_values_fold_by_octets():
    value = " ".join(["café"] * 40)
    message = Message(b"")
    message.append("Subject", value)
    raw = message.to_bytes()
    assert all(len(line) <= 78 for line in raw.split(b"\r\n"))
    assert Message(raw).get("Subject") == value


def test_explicit_folding_is_kept():
    message = Message(b"")
    message.append("X-Folded", "a,\r\n b,\n\tc")
    assert message.to_bytes() == b"X-Folded: a,\r\n b,\r\n\tc\r\n"
    assert message.get("X-Folded") == "a, b,\tc"


def test_values_are_trimmed_and_empty_values_allowed():
    message = Message(b"")
    message.append("X-A", "  padded \t")
    message.append("X-B", "")
    assert message.to_bytes() == b"X-A: padded\r\nX-B:\r\n"


@pytest.mark.parametrize("value", [
    "x\r\nBcc: evil@x.example", "x\nBcc: evil@x.example", "x\rBcc: evil", "x\r\n",
    "x\r\n\r\nbody", "x\r\n \r\n y", "x\n\n y", "\x00", "a\x1bb", "a\x7f", "a\ud800",
    "x\r \ny", "a\x0bb", "a\x0cb",
])
def test_injection_is_refused(value):
    message = Message(SAMPLE)
    with pytest.raises(HeaderError) as info:
        message.append("X-Evil", value)
    assert isinstance(info.value, ScriptError)
    assert message.to_bytes() == SAMPLE


@pytest.mark.parametrize("name", [
    "", "X Evil", "X:Evil", "X-Évil", "X\r\nBcc", "X\t", "Subject:", " Subject", "X\x00",
    None, 1,
])
def test_bad_names_are_refused(name):
    message = Message(SAMPLE)
    for edit in (lambda: message.append(name, "v"), lambda: message.prepend(name, "v"),
                 lambda: message.set(name, "v"), lambda: message.rename("From", name)):
        with pytest.raises(HeaderError):
            edit()
    assert message.to_bytes() == SAMPLE


@pytest.mark.parametrize("value", [None, 1, ["a"]])
def test_values_must_be_strings(value):
    with pytest.raises(HeaderError, match="must be a string"):
        Message(b"").append("X", value)


def test_lookups_need_string_names():
    with pytest.raises(HeaderError, match="must be a string"):
        Message(SAMPLE).get(3)
    assert Message(SAMPLE).get("not a name") is None


def test_lines_longer_than_998_octets_are_refused():
    with pytest.raises(HeaderError, match="998"):
        Message(b"").append("X", "y" * 1000)
    with pytest.raises(HeaderError, match="998"):
        Message(b"").append("X", "a\r\n " + "y" * 1000)
    message = Message(b"")
    message.append("X", "y" * 995)  # "X: " + 995 = 998 octets
    assert len(message.to_bytes()) == 1000


def test_printable_name_characters_are_allowed():
    message = Message(b"")
    message.append("X-!#$%&'*+.^_`|~", "v")
    assert message.get("x-!#$%&'*+.^_`|~") == "v"


# ---- Message: fuzzing --------------------------------------------------------------------

message_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from([b"Subject: x", b"To: a", b" cont", b"\tcont", b"", b"garbage",
                              b"X-\xff: y", b":", b"A:b", b"\r", b"body \xc3\xa9"]),
             max_size=12).map(lambda ls: b"\r\n".join(ls)),
    st.lists(st.sampled_from([b"A: 1", b" 2", b"", b"B: 3", b"x"]), max_size=8)
    .map(lambda ls: b"\n".join(ls)),
)


@FUZZ
@given(message_bytes)
def test_any_bytes_round_trip(data):
    message = Message(data)
    assert message.to_bytes() == data
    assert isinstance(message.body, str)
    for name, value in message.fields():
        assert message.get(name) is not None and isinstance(value, str)


@FUZZ
@given(message_bytes, st.sampled_from(["append", "prepend", "set"]),
       st.text(alphabet="ab \té", max_size=100))
def test_edits_change_only_their_field(data, edit, value):
    message = Message(data)
    before = message.fields()
    getattr(message, edit)("X-Edit", value)
    after = Message(message.to_bytes())
    assert after.to_bytes() == message.to_bytes()
    assert after.body_bytes == message.body_bytes == Message(data).body_bytes
    assert after.get("X-Edit") == re.sub(r"^[ \t]+|[ \t]+$", "", value)
    rest = [f for f in after.fields() if f[0] != "X-Edit"]
    assert rest == [f for f in before if f[0] != "X-Edit"]
    assert after.remove("X-Edit") is True
