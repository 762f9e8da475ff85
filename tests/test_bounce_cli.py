"""vsl bounce classify / eval / train: output formats, exit codes and errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vsl.cli import main
from vsl.stdlib.support.bounce import train

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bounces-train.jsonl"
TINY = [{"text": "550 5.1.1 <bob@example.net>: no such user here", "reason": "userunknown"},
        {"text": "552 5.2.2 <carol@example.net>: mailbox full, over quota",
         "reason": "mailboxfull"},
        {"text": "Subject: Out of office\nAuto-Submitted: auto-replied\n\n"
                 "I am away until Monday.\n", "reason": "vacation"}]


def run(*args, stdin: str | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=stdin)


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in TINY))
    return path


def test_classify_prints_file_reason_confidence(tmp_path):
    line = tmp_path / "line.txt"
    line.write_text("550 5.1.1 no such user\n")
    result = run("bounce", "classify", line)
    name, reason, confidence = result.output.rstrip("\n").split("\t")
    assert result.exit_code == 0 and name == str(line) and reason == "userunknown"
    assert 0 < float(confidence) <= 1


def test_classify_json_from_stdin():
    result = run("bounce", "classify", "--json", "-", stdin="452 4.2.2 mailbox over quota")
    entry = json.loads(result.output)
    assert result.exit_code == 0 and entry["file"] == "-"
    assert set(entry) == {"file", "reason", "confidence", "hard", "status"}
    assert entry["status"] == "4.2.2" and entry["hard"] is False


def test_classify_reports_an_unreadable_file_and_goes_on(tmp_path):
    line = tmp_path / "line.txt"
    line.write_text("550 5.1.1 no such user\n")
    result = run("bounce", "classify", tmp_path / "missing.eml", line)
    assert result.exit_code == 1 and "missing.eml: No such file or directory" in result.output
    assert f"{line}\tuserunknown\t" in result.output


def test_eval_prints_the_measures(tiny):
    result = run("bounce", "eval", tiny)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("3 messages: accuracy")
    for part in ("macro-F1", "ms/message", "per reason:", "most confused"):
        assert part in result.output


def test_eval_refuses_a_file_without_labels(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "550 no"}\n')
    result = run("bounce", "eval", bad)
    assert result.exit_code == 1 and "object 1 needs a text and a reason" in result.output


def test_eval_with_a_corrupt_model(tiny, tmp_path):
    broken = tmp_path / "model.npz"
    broken.write_bytes(b"PK\x03\x04 not a zip")
    result = run("bounce", "eval", tiny, "--model", broken)
    assert result.exit_code == 1 and "cannot load the model" in result.output


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is absent")
def test_eval_on_the_labelled_file():
    result = run("bounce", "eval", SHARED_DATA)
    assert result.exit_code == 0 and "messages: accuracy" in result.output


def test_train_passes_its_arguments_to_the_trainer(tiny, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(train, "run", lambda *args, **options: seen.append((args, options)))
    out = tmp_path / "m.npz"
    assert run("bounce", "train", tiny, "--out", out, "--cv", "--quick").exit_code == 0
    assert seen == [((TINY, train.Settings(), str(out), True, True), {"learned": [], "auto": []})]


def test_train_reads_its_data_once(tiny, tmp_path, monkeypatch):
    opened = []
    load_jsonl = train.load_jsonl
    monkeypatch.setattr(train, "load_jsonl", lambda path: opened.append(path) or load_jsonl(path))
    monkeypatch.setattr(train, "report", lambda rows, guesses: None)
    monkeypatch.setattr(train, "cross_validate", lambda *args: None)
    assert run("bounce", "train", tiny, "--cv").exit_code == 0
    assert opened == [str(tiny)]


def test_train_needs_out_or_cv(tiny):
    result = run("bounce", "train", tiny)
    assert result.exit_code == 2 and "give --out MODEL, --cv or both" in result.output


def test_help_imports_neither_numpy_nor_the_model():
    code = ("import sys\nfrom vsl.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nprint('numpy' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "bounce" in proc.stdout and proc.stdout.rstrip().endswith("False")
