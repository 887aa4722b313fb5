"""The one error of the release builder, raised where a build or its checks go wrong.

The CLI prints it as one line and exits non-zero; nothing is uploaded after one.
"""

from __future__ import annotations

from push.errors import PushError


class BuildError(PushError):
    """The release could not be built, failed its checks, or its input is unusable."""


def stderr_summary(text: str | bytes, limit: int = 400) -> str:
    """A subprocess's stderr as one line: its non-empty lines joined, the tail kept if long."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    summary = " / ".join(lines)
    if len(summary) > limit:
        summary = "..." + summary[-limit:]
    return summary or "no error output"
