"""The key=value tail of text log lines: what is written reads back the same."""
from hypothesis import given, strategies as st

from vsl.server.logfmt import encode, parse


def test_bare_and_quoted_values():
    tail = encode({"session": "3f2a9c1b7d0e", "to": "<b@example.net>", "reply":
                   '554 5.7.1 "no" \\ here', "empty": "", "skipped": None, "n": 3})
    assert tail == ('session=3f2a9c1b7d0e to=<b@example.net> '
                    'reply="554 5.7.1 \\"no\\" \\\\ here" empty="" n=3')
    assert parse("reject: RCPT from unknown[1.2.3.4]: 554 x; " + tail) == {
        "session": "3f2a9c1b7d0e", "to": "<b@example.net>",
        "reply": '554 5.7.1 "no" \\ here', "empty": "", "n": "3"}


def test_control_characters_stay_on_one_line():
    tail = encode({"helo": "a\nb\x00c\x7f"})
    assert "\n" not in tail and parse(tail) == {"helo": "a\nb\x00c\x7f"}


@given(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True),
                       st.text(max_size=20), max_size=5))
def test_parse_reads_back_what_encode_wrote(pairs):
    assert parse(encode(pairs)) == pairs


def test_the_tail_wins_over_the_message():
    assert parse("reject: from=<x> " + encode({"from": "<y>"})) == {"from": "<y>"}
