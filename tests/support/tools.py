"""Debian tools some tests drive: found, skipped without them, or failed under CI=true."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def require(name: str, package: str) -> str:
    """The tool's path; without it the test is skipped, unless CI=true (then it fails)."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        missing(name, package)
    return path


def require_perl_module(module: str, package: str) -> None:
    """Skip (or under CI=true fail) the test unless perl can load module."""
    perl = require("perl", "perl-base")
    if subprocess.run([perl, f"-M{module}", "-e1"], capture_output=True).returncode:
        missing(f"perl's {module}", package)


def missing(what: str, package: str) -> None:
    message = f"{what} is not installed (apt-get install {package})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}, and CI=true requires it")
    pytest.skip(message)
