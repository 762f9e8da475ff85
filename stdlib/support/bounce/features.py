"""What the network reads of a parsed bounce: hashed text and structure features.

Design: three texts are read, each in its own namespace so that one cannot drown another:
the *focus* (the first recipient's diagnostic, followed by the text's failure reply line
when it shows no reply code, or the readable text when there is none), the *context* (the
readable text of the bounce, weighed down: mostly boilerplate) and the subject. Each gives
word unigrams and bigrams; the focus also gives character 3- to 5-grams of its letters with
the spaces removed, so "mail box", "mailbox" and a misspelt "mailbx" share most features,
and its words once more crossed with the SMTP phase (a "user unknown" answered after DATA
is a filter's verdict, after RCPT TO an address's).
Addresses, URLs and numbers are dropped from the words, they name no reason.
The structure the standards give becomes one feature each: message kind, DSN action,
enhanced status code (whole, class, subject, subject.detail), every enhanced code the
focus text shows, reply code and its class, SMTP phase, the header's marks of an
automatic message, and the phase crossed with the kind, the reply code and the status
code's class and subject, and the DSN action crossed with the status class (a 4.x.x
that "failed" is a message the MTA gave up retrying).

The focus can be replaced by one of its clauses (``clauses``, ``featurize_parts``): the
model judges the message with each clause as its focus too (``model.py``), all of them
featurized as one batch, each namespace in a few numpy calls for the whole batch.

Every feature is hashed into ``BUCKETS`` slots with a deterministic hash (CRC-32 for words,
a polynomial hash computed with numpy for character n-grams); each namespace's counts are
log-scaled and L2-normalised. A vector is ``(indices, values)``, sorted by index (a batch:
the rows' in CSR form, ``(indices, values, offsets)``). A model
reads the features hashed into as many slots as its embedding table has rows, so that a
model file trained with another ``BUCKETS`` keeps working. 2 ** 16 slots: with 2 ** 15,
training touched 94% of them, and a held-out family's unseen n-grams fell on slots trained
for others.
"""
from __future__ import annotations

import re
import zlib

import numpy as np

from .message import ADDRESS, ENHANCED_CODE, REPLY_CODE, Bounce, failure_line

BUCKETS = 1 << 16
CHAR_NGRAMS = (3, 4, 5)
MAX_FOCUS = 1200
MAX_CONTEXT = 3000
STRUCTURE_WEIGHT = 3.0  # the structure namespace's norm; the focus' namespaces have norm 1
CONTEXT_WEIGHT = 0.25  # the whole readable text: mostly boilerplate around the diagnostic
PHASE_WORDS_WEIGHT = 1.0  # the focus words crossed with the SMTP phase
WORD = re.compile(r"[^\W\d_]+")
CLAUSE_BREAK = re.compile(r"(?<=[.;!?])\s+|:\s+|\s+-+\s+|[()\[\]\n]|\s{3,}")
MAX_CLAUSES = 12
URL = re.compile(r"\w{2,10}://[^\s<>\"']{0,300}")
_POWERS = np.array([pow(1000003, k, 1 << 64) for k in range(max(CHAR_NGRAMS))], dtype=np.uint64)


def featurize(bounce: Bounce, buckets: int = BUCKETS, focus: str | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """The feature vector of a bounce hashed into ``buckets`` slots: (sorted slot indices,
    values); ``focus`` read in place of its own (one of its clauses)."""
    common, (index, value, _) = featurize_parts(
        bounce, [focus_of(bounce) if focus is None else focus], buckets)
    return _merged([common, (index, value)])


def featurize_parts(bounce: Bounce, focuses: list[str], buckets: int = BUCKETS
                    ) -> tuple[tuple[np.ndarray, np.ndarray],
                               tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The features of ``bounce`` that no focus changes (the context and the subject), and
    for each of ``focuses`` those it gives read as the focus text (its words, characters,
    phase words and the structure) as one batch in CSR form (index, value, offsets: row k
    is ``offsets[k]:offsets[k + 1]``); a whole vector is the two merged (``featurize``).
    The focuses are featurized together, each namespace in a few numpy calls for all."""
    common = _merged([_normalised(_words("c", bounce.text[:MAX_CONTEXT]), CONTEXT_WEIGHT,
                                  buckets),
                      _normalised(_words("s", bounce.subject), 1.0, buckets)])
    hashed: dict[str, int] = {}
    words = [_clean_words(focus) for focus in focuses]
    fixed = _structure(bounce)
    structure = [[_hash(name) for name in fixed + _seen_codes(focus)] for focus in focuses]
    phase = f"p{bounce.first.phase}:"
    parts = [(*_word_hashes("f", words, hashed, bigrams=True), 1.0),
             (*_char_hashes(words), 1.0),
             (*_word_hashes(phase, words, hashed, bigrams=False), PHASE_WORDS_WEIGHT),
             (*_rows_of([np.array(row, dtype=np.uint64) for row in structure]),
              STRUCTURE_WEIGHT)]
    return common, _normalised_rows(parts, len(focuses), buckets)


def focus_of(bounce: Bounce) -> str:
    """The text the network reads first: the first recipient's diagnostic, else the
    readable text. A diagnostic that shows no reply code (a mailer's exit status, the
    text around an address that a layout writes apart from the reason) is followed by the
    line of the text that shows its failure reply (``failure_line``: not another
    recipient's), on a line of its own."""
    diagnostic = bounce.first.diagnostic
    if not diagnostic:
        return bounce.text[:MAX_FOCUS]
    diagnostic = diagnostic[:MAX_FOCUS]
    line = "" if REPLY_CODE.search(diagnostic) else failure_line(bounce)
    return f"{diagnostic}\n{line}"[:MAX_FOCUS] if line else diagnostic


def clauses(focus: str) -> list[str]:
    """The first ``MAX_CLAUSES`` clauses of ``focus`` that have two words of two letters or
    more (addresses and URLs not counted), each with other words than the ones before:
    split after a sentence's end (``.;!?``) and at a colon, at a dash with spaces around
    it, at brackets, at line ends and at runs of three spaces or more."""
    found: list[str] = []
    seen: set[tuple[str, ...]] = set()
    for piece in CLAUSE_BREAK.split(focus):
        words = tuple(_clean_words(piece))
        if sum(len(word) > 1 for word in words) >= 2 and words not in seen:
            seen.add(words)
            found.append(piece.strip())
            if len(found) == MAX_CLAUSES:
                break
    return found


def _structure(bounce: Bounce) -> list[str]:
    """The standards' structure as named features, with the SMTP phase crossed with the
    codes (the same 550 means another thing after RCPT TO than after DATA) and the DSN
    action with the status class."""
    first = bounce.first
    phase, status = first.phase, first.status
    names = [f"kind={bounce.kind}", f"action={first.action}", f"phase={phase}",
             f"reply={first.reply_code}", f"replyclass={first.reply_code[:1]}",
             f"kind.phase={bounce.kind}.{phase}", f"phase.reply={phase}.{first.reply_code}",
             f"phase.status={phase}.{status[:3]}", f"action.status={first.action}.{status[:1]}"]
    names += [f"mark={mark}" for mark in bounce.marks]
    return names + _status_features("status", status)


def _seen_codes(focus: str) -> list[str]:
    """Every enhanced code the focus text shows (the first four)."""
    names = []
    for match in list(ENHANCED_CODE.finditer(focus))[:4]:
        names += _status_features("seen", ".".join(match.groups()))
    return names


def _status_features(prefix: str, status: str) -> list[str]:
    if not status:
        return [f"{prefix}=none"]
    cls, subject, detail = (status.split(".") + ["", ""])[:3]
    return [f"{prefix}={status}", f"{prefix}.class={cls}", f"{prefix}.subject={subject}",
            f"{prefix}.detail={subject}.{detail}"]


def _clean_words(text: str) -> list[str]:
    text = URL.sub(" ", ADDRESS.sub(" ", text.lower()))
    return WORD.findall(text)


def _words(namespace: str, text: str) -> np.ndarray:
    """The hashes of the words of ``text`` and of its bigrams."""
    return _word_hashes(namespace, [_clean_words(text)], {}, bigrams=True)[0]


def _chars(text: str) -> np.ndarray:
    """The hashes of the character n-grams of the letters of ``text``."""
    return _char_hashes([_clean_words(text)])[0]


def _word_hashes(namespace: str, rows: list[list[str]], hashed: dict[str, int],
                 bigrams: bool) -> tuple[np.ndarray, np.ndarray]:
    """The hashes of each row's words (and of its bigrams), with the row of each:
    ``_words`` for many texts, each word hashed once (``hashed``)."""
    for words in rows:
        for word in words:
            if namespace + word not in hashed:
                hashed[namespace + word] = _hash(namespace + word)
    hashes, row_of = _rows_of([np.array([hashed[namespace + word] for word in words],
                                        dtype=np.uint64) for words in rows])
    if not bigrams or len(hashes) < 2:
        return hashes, row_of
    inside = row_of[:-1] == row_of[1:]
    pairs = hashes[:-1][inside] * np.uint64(0x9E3779B97F4A7C15) ^ hashes[1:][inside]
    return np.concatenate([hashes, pairs]), np.concatenate([row_of, row_of[:-1][inside]])


def _char_hashes(rows: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """The hashes of the character n-grams of each row's letters (its words joined), with
    the row of each; no n-gram spans two rows."""
    letters = ["".join(words) for words in rows]
    codes = np.frombuffer("".join(letters).encode("utf-32-le"), dtype=np.uint32)
    codes = codes.astype(np.uint64)
    row_at = np.repeat(np.arange(len(rows)), [len(text) for text in letters])
    found, row_of = [], []
    for n in CHAR_NGRAMS:
        if len(codes) < n:
            continue
        whole = row_at[:1 - n or None] == row_at[n - 1:]
        windows = np.lib.stride_tricks.sliding_window_view(codes, n)[whole]
        found.append(windows @ _POWERS[:n] + np.uint64(n * 0x51ED27))
        row_of.append(row_at[:1 - n or None][whole])
    if not found:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return np.concatenate(found), np.concatenate(row_of)


def _rows_of(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The arrays concatenated, with the row (the array's number) of each element."""
    lengths = [len(array) for array in arrays]
    return (np.concatenate(arrays) if arrays else np.zeros(0, np.uint64),
            np.repeat(np.arange(len(arrays)), lengths))


def _hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8", "replace"))


def _normalised(hashes: np.ndarray, scale: float, buckets: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """One namespace's hashes as (slots, values): log-scaled counts with an L2 norm of
    ``scale``."""
    index, value, _ = _normalised_rows([(hashes, np.zeros(len(hashes), np.int64), scale)], 1,
                                       buckets)
    return index, value


def _merged(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The namespaces' (slots, values) as one vector, sorted by slot."""
    index = np.concatenate([slots for slots, _ in parts])
    value = np.concatenate([values for _, values in parts])
    order = np.argsort(index, kind="stable")
    return index[order], value[order].astype(np.float32)


def _normalised_rows(parts: list[tuple[np.ndarray, np.ndarray, float]], count: int,
                     buckets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The namespaces' hashes of ``count`` rows as one batch in CSR form (index, value,
    offsets), each row sorted by slot: ``parts`` are the namespaces' (hashes, row of each
    hash, norm); in each row, a namespace's log-scaled counts with an L2 norm of its norm,
    the namespaces merged (a slot two of them reach appears twice, in their order)."""
    rows, slots = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    values = [np.zeros(0, np.float32)]
    for hashes, row_of, scale in parts:
        if not len(hashes):
            continue
        keys = row_of.astype(np.uint64) * np.uint64(buckets) + hashes % np.uint64(buckets)
        unique, counts = np.unique(keys, return_counts=True)
        row = (unique // np.uint64(buckets)).astype(np.int64)
        weights = np.log1p(counts.astype(np.float32))
        norms = np.sqrt(np.bincount(row, weights ** 2, minlength=count)).astype(np.float32)
        rows.append(row)
        slots.append((unique % np.uint64(buckets)).astype(np.int64))
        values.append(scale * weights / norms[row])
    row, slot = np.concatenate(rows), np.concatenate(slots)
    order = np.lexsort((slot, row))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=count))])
    return slot[order], np.concatenate(values)[order].astype(np.float32), offsets


def focus_features(bounce: Bounce) -> tuple[np.ndarray, np.ndarray]:
    """The word and character n-gram features of the focus text alone, without the
    structure (what learned examples are compared by: ``memory.py``)."""
    focus = focus_of(bounce)
    return _merged([_normalised(_words("f", focus), 1.0, BUCKETS),
                    _normalised(_chars(focus), 1.0, BUCKETS)])
