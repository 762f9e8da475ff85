"""The synthetic bounce set: reproducible, covering every reason it claims, every envelope
parseable, and following the labelling conventions of the data."""
from __future__ import annotations

import random
from collections import Counter

from vsl.stdlib.support.bounce import synthetic
from vsl.stdlib.support.bounce.message import parse
from vsl.stdlib.support.bounce.synthetic import envelopes
from vsl.stdlib.support.bounce.synthetic.diagnostics import CODES, DIAGNOSTICS

SET = synthetic.samples(3000)


def test_the_set_is_deterministic_for_a_seed():
    assert synthetic.samples(300, seed=3) == synthetic.samples(300, seed=3)
    assert synthetic.samples(300, seed=3) != synthetic.samples(300, seed=4)


def test_every_reason_it_claims_is_drawn():
    drawn = Counter(sample["reason"] for sample in SET)
    assert set(drawn) == set(synthetic.REASONS)
    assert min(drawn.values()) >= 20


def test_every_reason_has_codes_and_diagnostics():
    assert set(CODES) == set(DIAGNOSTICS)
    assert all(CODES[reason] and DIAGNOSTICS[reason] for reason in DIAGNOSTICS)


def test_every_envelope_is_used_and_names_the_recipient():
    groups = Counter(sample["group"] for sample in SET)
    assert {f"synthetic-{envelope.__name__}" for envelope in envelopes.ENVELOPES} <= set(groups)
    for envelope in envelopes.ENVELOPES:
        bounce = parse(envelope("neko@example.net", "550 5.1.1 no such user", "rcpt", "5.1.1",
                                random.Random(1)))
        assert "neko@example.net" in [rcpt.address for rcpt in bounce.recipients]


def test_autoreplies_and_reports_parse_as_their_kind():
    kinds = Counter(parse(sample["text"]).kind for sample in SET
                    if sample["reason"] == "feedback")
    assert set(kinds) == {"feedback"}
    vacation = [parse(s["text"]) for s in SET if s["reason"] == "vacation"]
    assert all(not bounce.recipients or bounce.kind != "dsn" for bounce in vacation)


def test_unknown_user_after_data_is_filtered():
    after_data = [s for s in SET if s["reason"] == "filtered" and
                  any(text in s["text"] for text in DIAGNOSTICS["userunknown"])]
    assert len(after_data) >= 20


def test_no_reason_lists_a_diagnostic_twice():
    for reason, texts in DIAGNOSTICS.items():
        assert len(texts) == len(set(texts)), reason


def test_a_list_refusal_from_the_mail_system_names_the_list_as_failed():
    texts = [envelopes.list_refusal("neko@example.net", "Only members may post.", [],
                                    random.Random(seed)) for seed in range(40)]
    from_system = [parse(text) for text in texts if "X-Failed-Recipients" in text]
    assert from_system and all("x-failed-recipients" in bounce.marks for bounce in from_system)
    assert len(from_system) < len(texts)


def test_an_expiry_is_a_give_up_notice_or_a_delay_warning():
    actions = {parse(envelopes.expiry("neko@example.net", "421 4.4.2 timed out", "", "4.4.2",
                                      random.Random(seed))).first.action for seed in range(40)}
    assert {"failed", "delayed"} <= actions


def test_a_postfix_finding_of_its_own_is_an_x_postfix_diagnostic():
    text = envelopes.postfix("neko@example.net", "5.1.2 Domain not found", "", "5.1.2",
                             random.Random(1))
    assert "Diagnostic-Code: X-Postfix; 5.1.2 Domain not found" in text
    assert "said:" not in text
