"""Debian tools some tests drive: found, skipped without them, or failed under CI=true."""
from __future__ import annotations

import os
import shutil

import pytest


def require(name: str, package: str) -> str:
    """The tool's path; without it the test is skipped, unless CI=true (then it fails)."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        message = f"{name} is not installed (apt-get install {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}, and CI=true requires it")
        pytest.skip(message)
    return path
