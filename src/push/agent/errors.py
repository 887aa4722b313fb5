"""The agent's named errors: why one release could not be installed or removed.

Each is reported as-is in `status/{server}.json` (its str() is the reason a user reads),
so they carry the words of the tool that failed (dpkg's stderr, apt-get's), not a summary.
They are the AgentError branch of the tree in push.errors.
"""

from __future__ import annotations

from push.errors import PushError


class AgentError(PushError):
    """Base of the errors that stop one release (or one step) but never the agent."""


class DpkgError(AgentError):
    """dpkg, dpkg-query, dpkg-deb or apt-get failed; the message holds its stderr."""

    def __init__(self, message: str, *, stderr: str = "", returncode: int | None = None) -> None:
        super().__init__(message)
        self.stderr = stderr
        self.returncode = returncode


class DpkgLocked(DpkgError):
    """Another dpkg or apt holds the dpkg database lock (it is waited for, then this)."""


class DependencyMissing(AgentError):
    """A Depends of the package is not installed and cannot be installed from the distribution."""


class VerificationFailed(AgentError):
    """The downloaded .deb does not match the sha256 or size in the release metadata."""


class DiskFull(AgentError):
    """Not enough space in the state directory for the download."""


class UnitError(AgentError):
    """The service manager could not start, stop or read a unit."""


class AgentStateError(AgentError):
    """The agent's state directory is held by another pulld, or its record is unreadable."""
