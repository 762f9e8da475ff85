"""server/files.py: the durable writes that the spool and the local transports share."""
from __future__ import annotations

import os
import stat

import pytest

from vsl.server import files


def test_a_new_file_is_private_and_never_replaces_one(tmp_path):
    path = tmp_path / "new"
    files.write_new_file(path, b"x" * 100_000)
    assert path.read_bytes() == b"x" * 100_000
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        files.write_new_file(path, b"other", fsync=False)
    assert path.read_bytes() == b"x" * 100_000


def test_a_failed_write_removes_the_new_file(tmp_path, monkeypatch):
    def short_of_space(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", short_of_space)
    with pytest.raises(OSError, match="No space left"):
        files.write_new_file(tmp_path / "new", b"data")
    assert list(tmp_path.iterdir()) == []


def test_syncs(tmp_path):
    files.sync_directory(tmp_path)
    if files.HAS_SYNCFS:
        files.sync_file_system(tmp_path)
    with pytest.raises(FileNotFoundError):
        files.sync_directory(tmp_path / "missing")
