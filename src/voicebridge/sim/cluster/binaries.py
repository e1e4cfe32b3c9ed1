"""The Debian programs the cluster harness runs: where they are, and what to do when they
are not there."""

from __future__ import annotations

import os
import shutil

__all__ = ["INSTALL_HINT", "REQUIRED", "MissingBinaries", "binary", "missing"]

#: The programs the harness starts, by the name it looks them up under.
REQUIRED = ("redis-server", "haproxy")

#: How to get them on Debian or Ubuntu.
INSTALL_HINT = "sudo apt-get install -y redis-server haproxy"

# Debian puts haproxy in /usr/sbin, which is not on every user's PATH.
_EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


class MissingBinaries(RuntimeError):
    """redis-server or haproxy is not installed; the message says how to install them."""


def _find(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in _EXTRA_DIRS:
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return None


def missing() -> list[str]:
    """The programs of :data:`REQUIRED` that cannot be found."""
    return [name for name in REQUIRED if _find(name) is None]


def missing_message() -> str | None:
    """A sentence naming what is missing and how to install it; None if nothing is."""
    absent = missing()
    if not absent:
        return None
    return (
        f"the cluster harness needs {' and '.join(absent)} (not found on PATH or in "
        f"{', '.join(_EXTRA_DIRS)}); install with: {INSTALL_HINT}"
    )


def binary(name: str) -> str:
    """The absolute path of ``name``; :class:`MissingBinaries` saying how to install it."""
    path = _find(name)
    if path is None:
        raise MissingBinaries(missing_message() or f"{name} not found")
    return path
