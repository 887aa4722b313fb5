"""Agent status reports: what each server actually runs, as its pulld last saw it.

pulld writes `status/{server}.json` to the bucket after every step; the push server and
`push status` read them. Reports live in the bucket (not in the push server's memory) so
that any number of push servers, and the CLI without a push server, see the same truth.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from push.errors import NotFound, PushError
from push.serverfile import check_server
from push.store import Store

STATUS_PREFIX = "status/"
# An agent that has not reported for this long is flagged as stale.
STALE_AFTER_SECONDS = 15 * 60


def status_key(server: str) -> str:
    return f"{STATUS_PREFIX}{check_server(server)}.json"


@dataclass
class AppStatus:
    """One app on one server: what is wanted, what dpkg says is there, how its units are."""

    desired: str | None = None        # release name from the server file, None if not listed
    installed: str | None = None      # release name dpkg reports installed, None if none
    package: str | None = None
    version: str | None = None
    state: str = "ok"                 # ok | pending | installing | failed | removing
    error: str | None = None          # last error text (dpkg's own words), None if the last try worked
    error_time: str | None = None
    attempts: int = 0                 # consecutive failures (drives the backoff)
    next_retry: str | None = None
    units: dict[str, str] = field(default_factory=dict)  # unit -> active/inactive/failed/...


@dataclass
class AgentStatus:
    server: str
    agent_version: str
    time: str                          # UTC ISO-8601 time of the report
    hostname: str = ""
    server_file_generation: str | None = None
    in_sync: bool = False              # every listed release installed, nothing extra, no failure
    step: int = 0
    apps: dict[str, AppStatus] = field(default_factory=dict)
    error: str | None = None           # an error not tied to one app (store unreachable, bad server file)

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> AgentStatus:
        try:
            apps = {name: AppStatus(**app) for name, app in dict(data.get("apps") or {}).items()}  # type: ignore[arg-type]
            fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "apps"}
            return cls(apps=apps, **fields)  # type: ignore[arg-type]
        except (TypeError, ValueError, AttributeError) as e:
            raise PushError(f"malformed status report: {e}") from None

    @property
    def reported_at(self) -> datetime:
        return datetime.fromisoformat(self.time.replace("Z", "+00:00"))

    def age_seconds(self, now: datetime | None = None) -> float:
        now = now or datetime.now(timezone.utc)
        return (now - self.reported_at).total_seconds()

    def is_stale(self, now: datetime | None = None) -> bool:
        return self.age_seconds(now) > STALE_AFTER_SECONDS


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write(store: Store, status: AgentStatus) -> None:
    """Publish a report; the last writer wins (one agent owns each server's report)."""
    store.put(status_key(status.server), json.dumps(status.to_json(), indent=1).encode(),
              content_type="application/json")


def read(store: Store, server: str) -> AgentStatus | None:
    try:
        with store.open(status_key(server)) as reader:
            data = reader.read()
    except NotFound:
        return None
    try:
        return AgentStatus.from_json(json.loads(data))
    except ValueError as e:
        raise PushError(f"{status_key(server)}: not valid JSON ({e})") from None


def read_all(store: Store) -> dict[str, AgentStatus]:
    """Every report in the store, by server; unreadable ones are left out."""
    reports: dict[str, AgentStatus] = {}
    for info in store.list(STATUS_PREFIX):
        name = info.key[len(STATUS_PREFIX):]
        if not name.endswith(".json") or "/" in name:
            continue
        try:
            report = read(store, name[: -len(".json")])
        except PushError:
            continue
        if report is not None:
            reports[report.server] = report
    return reports
