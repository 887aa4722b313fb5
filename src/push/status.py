"""Agent status reports: what each server actually runs, as its pulld last saw it.

pulld writes `status/{server}.json` to the bucket after every step; the push server and
`push status` read them. Reports live in the bucket (not in the push server's memory) so
that any number of push servers, and the CLI without a push server, see the same truth.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from push import timestamps
from push.errors import NotFound
from push.layout import status_key
from push.model import Model
from push.store import Store

# An agent whose report does not say its interval (pulld before liveness) is flagged as
# stale when it has not reported for this long.
STALE_AFTER_SECONDS = 15 * 60
# An agent that says its report interval is stale after this many intervals without one.
STALE_INTERVALS = 3


class AppStatus(Model):
    """One app on one server: what is wanted, what dpkg says is there, how its units are."""

    noun = "app status"

    desired: str | None = None        # release name from the server file, None if not listed
    installed: str | None = None      # release name dpkg reports installed, None if none
    package: str | None = None
    version: str | None = None
    state: str = "ok"                 # ok | pending | installing | failed | removing | unmanaged
    error: str | None = None          # last error text (dpkg's own words), None if the last try worked
    error_time: str | None = None
    attempts: int = 0                 # consecutive failures (drives the backoff)
    next_retry: str | None = None
    units: dict[str, str] = Field(default_factory=dict)  # unit -> active/inactive/failed/...
    # Health, beside the sync state above (push.health; docs/pulld.md#health).
    health: str = "unknown"           # healthy | progressing | unhealthy | unknown
    health_detail: str | None = None  # why, in words: the failing check's output, the unit's last log lines
    reverted_from: str | None = None  # the release the agent refused (not healthy in time) and reverted
    health_since: str | None = None   # UTC: when the judgement of the installed release started (its units started)
    health_deadline: str | None = None  # UTC: by when it must be healthy (None once it has been, or not judged)


class TrustStatus(Model):
    """What the agent verifies (docs/trust.md), the server-file statement it follows, what it refused."""

    noun = "trust status"

    releases: str = "off"             # verified | off: release signatures checked before dpkg
    server_files: str = "off"         # verified | off: the server file followed only if its statement holds
    version: int | None = None        # the version of the server-file statement followed
    keyid: str | None = None          # ... the deploy key that signed it
    expires: str | None = None        # ... and when it expires (unless re-signed)
    # What is refused now: {"subject": server/NAME.json or a release, "reason": unsigned |
    # rollback | expired | ... (push.errors.Untrusted), "message": ..., "app": for a release}
    refused: list[dict[str, str]] = Field(default_factory=list)
    note: str | None = None           # e.g. a statement accepted with no memory of earlier versions

    @property
    def mode(self) -> str:
        """verified (both), off (neither), or which one is verified."""
        both = (self.releases, self.server_files)
        if both == ("verified", "verified"):
            return "verified"
        if both == ("off", "off"):
            return "off"
        return "releases only" if self.releases == "verified" else "server files only"


class AgentStatus(Model):
    """The agent's report: `status/{server}.json`, rewritten by pulld after every step."""

    noun = "status report"

    server: str
    agent_version: str
    time: str                          # UTC ISO-8601 time of the report
    hostname: str = ""
    server_file_generation: str | None = None
    in_sync: bool = False              # every listed release installed, nothing extra, no failure
    step: int = 0
    apps: dict[str, AppStatus] = Field(default_factory=dict)
    error: str | None = None           # an error not tied to one app (store unreachable, bad server file)
    trust: TrustStatus | None = None   # None: an agent from before signatures
    # The agent journals every report that says something new (push.changes), so a push
    # server need not re-read its heartbeats; pulld before the journal leaves it out.
    journaled: bool = False
    # Seconds between heartbeats (pulld --report-interval): readers call the agent stale after
    # STALE_INTERVALS of them without a report. None: pulld before liveness (15 minutes).
    report_interval: float | None = None

    @property
    def stale_after(self) -> float:
        """Seconds without a report after which this agent is stale."""
        if self.report_interval is None or self.report_interval <= 0:
            return STALE_AFTER_SECONDS
        return STALE_INTERVALS * self.report_interval

    @property
    def reported_at(self) -> datetime:
        return timestamps.parse(self.time)

    def age_seconds(self, now: datetime | None = None) -> float:
        return ((now or timestamps.now()) - self.reported_at).total_seconds()

    def is_stale(self, now: datetime | None = None) -> bool:
        return self.age_seconds(now) > self.stale_after


def write(store: Store, status: AgentStatus) -> None:
    """Publish a report; the last writer wins (one agent owns each server's report)."""
    store.put(status_key(status.server), status.to_bytes(indent=1), content_type="application/json")


def parse(data: bytes, key: str) -> AgentStatus:
    """A report as stored at `key`; InvalidData if it is not one. Keys a newer pulld added
    are ignored, so old push servers read new reports."""
    return AgentStatus.from_bytes(data, key)


def read(store: Store, server: str) -> AgentStatus | None:
    """The server's last report (None if its agent never wrote one). A whole-object read,
    so a report rewritten meanwhile is read afresh, never half."""
    key = status_key(server)
    try:
        got = store.get(key)
    except NotFound:
        return None
    assert got is not None
    return parse(got[0], key)
