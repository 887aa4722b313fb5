"""What the agent should do now: a pure function from what it knows to a plan, app by app.

`plan(...)` takes the server file as parsed, what dpkg says is installed, the agent's record
of what Push installed, the release metadata it has read, the failures with their retry
times, the clock, the agent's own app name and the health verdicts of what runs. For each app
it decides: install, upgrade, downgrade, remove, revert a release that was not healthy in time
(see `_judged`), read the release's metadata first, or leave it (in sync, nothing chosen,
backing off until a time, or a refused release not retried until the file changes), and
says why. It reads nothing and changes nothing:
`push.agent.executor` carries a plan out, `push.agent.report` turns one into the report.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

from push.agent.dpkg import InstalledPackage
from push.agent.failures import Failure
from push.agent.judge import Verdict
from push.agent.state import AgentState, Refusal
from push.errors import InvalidRelease
from push.health import Health
from push.release import Release, ReleaseInfo
from push.serverfile import ServerFile


class Action(enum.StrEnum):
    INSTALL = "install"        # nothing of the app is (fully) installed as a known release: install it
    UPGRADE = "upgrade"        # a newer release than the one installed
    DOWNGRADE = "downgrade"    # an older release than the one installed: a rollback
    REMOVE = "remove"          # the file says "APP/" (explicit removal): purge what Push installed for it
    METADATA = "metadata"      # the wanted release's metadata is not known yet: read it, then plan again
    LEAVE = "leave"            # nothing to do now: in sync, nothing chosen, or backing off (`until`)
    REVERT = "revert"          # the installed release was not healthy in time: go back to `revert_to`


INSTALLS = frozenset({Action.INSTALL, Action.UPGRADE, Action.DOWNGRADE})
CHANGES = INSTALLS | {Action.REMOVE, Action.REVERT}


@dataclass(frozen=True)
class AppPlan:
    """The decision for one app, and why (the words go to the logs and the report)."""

    app: str
    action: Action
    why: str
    listed: bool = True                  # the server file names the app (a release or a placeholder)
    desired: Release | None = None       # the release it names (None: a placeholder, or not listed)
    info: ReleaseInfo | None = None      # that release's metadata, when known
    installed: str | None = None         # the release Push knows is installed, as dpkg says
    row: InstalledPackage | None = None  # dpkg's row of the app's package, installed or not (fully)
    attempt: int = 1                     # a change after n failures of the same release is attempt n+1
    until: float | None = None           # LEAVE while backing off: when the retry is due (the clock of `now`)
    revert_to: str | None = None         # REVERT: the release that ran before, to install again
    refused: Refusal | None = None       # the desired release was reverted and is not retried until the file changes
    verdict: Verdict | None = None       # the health of the installed release, as last judged
    unmanaged: bool = False              # installed, but the file does not mention the app: left running

    @property
    def changes(self) -> bool:
        """It installs or removes something."""
        return self.action in CHANGES

    @property
    def installs(self) -> bool:
        return self.action in INSTALLS

    @property
    def retry(self) -> bool:
        return self.attempt > 1

    @property
    def placeholder(self) -> bool:
        """The file says `app/`: nothing of the app on this server (removed if installed)."""
        return self.listed and self.desired is None


@dataclass(frozen=True)
class Plan:
    """Every app's decision, immutable.

    `apps` is in report order: the apps the file names, in its order, then the ones only
    the agent's record knows, by name. `changes` is the order they are carried out in:
    removals first, then installs by app name, the agent's own release last (it restarts
    the agent).
    """

    apps: tuple[AppPlan, ...] = ()
    changes: tuple[AppPlan, ...] = ()
    forget: frozenset[str] = frozenset()     # apps whose recorded failure no longer applies
    restart_units: tuple[str, ...] = ()      # apps a killed agent installed and did not (re)start the units of
    has_file: bool = True                    # False: no server file to follow, everything is left as it is
    forget_refusals: frozenset[str] = frozenset()  # apps whose refused release no longer applies (the file changed)
    generation: str | None = None            # the server file's generation (a refusal holds until it changes)
    _by_app: dict[str, AppPlan] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_app", {p.app: p for p in self.apps})

    def __iter__(self) -> Iterator[AppPlan]:
        return iter(self.apps)

    def get(self, app: str) -> AppPlan | None:
        return self._by_app.get(app)

    @property
    def needs_metadata(self) -> tuple[AppPlan, ...]:
        return tuple(p for p in self.apps if p.action is Action.METADATA)

    def summary(self) -> dict[str, str]:
        """app -> "action: why" for what it changes (for the logs)."""
        return {p.app: f"{p.action}: {p.why}" for p in self.changes}


def deb_identity(info: ReleaseInfo, record: AgentState) -> tuple[str, str] | None:
    """(package, version) of a release: from its metadata, else from its .deb seen before
    (releases from the original tools carry neither in their metadata)."""
    package, version = info.extra.get("package"), info.extra.get("version")
    if package and version:
        return package, version
    known = record.debs.get(info.name)
    return (known[0], known[1]) if known else None


def installed_release(app: str, info: ReleaseInfo | None, installed: Mapping[str, InstalledPackage],
                      record: AgentState) -> tuple[str | None, InstalledPackage | None]:
    """(release name, dpkg row) of what is installed for `app`, as dpkg says.

    The release name comes from the record of what Push installed when dpkg still shows
    that package and version, else from the desired release's (package, version): so even
    releases of the original tools, all version 1.0, are told apart. A row that is on disk
    but not fully installed comes with no release name.
    """
    rec = record.apps.get(app)
    ident = deb_identity(info, record) if info is not None else None
    candidates = []
    if ident:
        candidates.append(ident[0])
    if rec is not None:
        candidates += ([rec.package] if rec.package else []) + rec.packages
    for package in dict.fromkeys(candidates):
        row = installed.get(package)
        if row is None or not row.ok:
            continue
        if rec is not None and rec.release and rec.package == row.package and rec.version == row.version:
            return rec.release, row
        if info is not None and ident == (row.package, row.version):
            return info.name, row
        return None, row
    for package in dict.fromkeys(candidates):
        row = installed.get(package)
        if row is not None and row.present:
            return None, row
    return None, None


def plan(server_file: ServerFile | None, *, installed: Mapping[str, InstalledPackage], record: AgentState,
         metadata: Mapping[str, ReleaseInfo], failures: Mapping[str, Failure], now: float,
         self_app: str, health: Mapping[str, Verdict] | None = None) -> Plan:
    """Decide, for every app the file names or the record knows, what to do now.

    `server_file` None means there is none to follow (missing or unreadable): everything is
    left as it is. `metadata` is by release name; `failures` by app, with `retry_at` on the
    clock of `now`; `health` by app, the latest verdict on its installed release.
    """
    health = health or {}
    if server_file is None:
        return Plan(tuple(_with_verdict(_without_file(app, installed, record), health)
                          for app in sorted(record.apps)), has_file=False)
    desired = server_file.releases
    listed = server_file.apps
    refusals = {app: rec.refused for app, rec in record.apps.items() if rec.refused is not None}
    standing = {app for app, r in refusals.items() if _refusal_stands(r, desired.get(app), server_file.generation)}
    stale = {app for app, f in failures.items() if _no_longer_applies(f, app, listed, desired, refusals.get(app))}
    live = {app: f for app, f in failures.items() if app not in stale}
    decisions = []
    for app in listed:
        rel = desired.get(app)
        if rel is None:
            decisions.append(_with_verdict(_placeholder(app, live.get(app), installed, record, now), health))
            continue
        decision, over = _for_release(app, rel, metadata.get(rel.name), live.get(app), installed, record, now)
        decision = _judged(decision, record, health.get(app), refusals.get(app) if app in standing else None,
                           live.get(app), now)
        decisions.append(decision)
        if over and app not in standing:  # a failed revert is not over while its refusal stands
            stale.add(app)
    decisions += [_with_verdict(_not_listed(app, installed, record), health)
                  for app in sorted(record.apps) if app not in listed]
    removals = sorted((p for p in decisions if p.action is Action.REMOVE), key=lambda p: p.app)
    installs = sorted((p for p in decisions if p.installs or p.action is Action.REVERT),
                      key=lambda p: (p.app == self_app, p.app))
    pending_units = tuple(sorted(app for app, rec in record.apps.items() if rec.units_pending))
    return Plan(tuple(decisions), tuple(removals + installs), frozenset(stale), pending_units,
                forget_refusals=frozenset(set(refusals) - standing), generation=server_file.generation)


def _no_longer_applies(failure: Failure, app: str, listed: list[str], desired: Mapping[str, Release],
                       refusal: Refusal | None = None) -> bool:
    if failure.release is None:  # a removal that failed: applies while the file still says "APP/"
        return app not in listed or app in desired
    rel = desired.get(app)
    if (refusal is not None and rel is not None and refusal.release == rel.name
            and failure.release == refusal.reverted_to):
        return False  # a revert that failed: retried while the refusal stands
    return rel is None or failure.release != rel.name  # another release (or none) is wanted now


# -- health: revert what was not healthy in time, and do not retry it --------------------------


def _refusal_stands(refusal: Refusal, rel: Release | None, generation: str | None) -> bool:
    """A refused release is not retried until the server file changes (a new generation)."""
    return rel is not None and rel.name == refusal.release and generation == refusal.generation


def _with_verdict(p: AppPlan, health: Mapping[str, Verdict]) -> AppPlan:
    verdict = health.get(p.app)
    return replace(p, verdict=verdict) if verdict is not None and verdict.release == p.installed else p


def _judged(p: AppPlan, record: AgentState, verdict: Verdict | None, refusal: Refusal | None,
            failure: Failure | None, now: float) -> AppPlan:
    """The health rule over a listed release's decision.

    - The release was refused (reverted) and the file has not changed since: leave it, or
      finish the revert if what is installed is not the release it went back to.
    - It is installed, in its install window, and its verdict is final (a unit failed, or
      its deadline passed) and allows a revert: go back to the release that ran before, if
      there was one.
    """
    if verdict is not None and verdict.release != p.installed:
        verdict = None  # a verdict on another release (just replaced) says nothing of this one
    p = replace(p, verdict=verdict)
    if refusal is not None:
        p = replace(p, refused=refusal)
        words = f"{refusal.release} was reverted (not healthy): not retried until the server file changes"
        if p.installed == refusal.reverted_to:
            return replace(p, action=Action.LEAVE, why=words, attempt=1, until=None)
        if failure is not None and failure.release == refusal.reverted_to and now < failure.retry_at:
            return replace(p, action=Action.LEAVE, why=f"{words}; going back to {refusal.reverted_to} "
                                                       f"{_backing_off(failure)}", until=failure.retry_at)
        attempt = failure.attempts + 1 if failure is not None and failure.release == refusal.reverted_to else 1
        return replace(p, action=Action.REVERT, revert_to=refusal.reverted_to, attempt=attempt,
                       why=f"{words}; going back to {refusal.reverted_to}")
    if (p.action is not Action.LEAVE or p.desired is None or p.installed != p.desired.name or verdict is None
            or verdict.health is not Health.UNHEALTHY or not verdict.final or not verdict.revert):
        return p
    previous = record.apps[p.app].previous if p.app in record.apps else None
    if previous is None or previous == p.installed:
        return replace(p, why=f"not healthy, and no release ran before it to revert to: {verdict.detail}")
    return replace(p, action=Action.REVERT, revert_to=previous,
                   why=f"{p.installed} is not healthy: reverting to {previous}")


def _backing_off(failure: Failure) -> str:
    times = "once" if failure.attempts == 1 else f"{failure.attempts} times"
    return f"failed {times}; next try at {failure.retry_wall}"


def _for_release(app: str, rel: Release, info: ReleaseInfo | None, failure: Failure | None,
                 installed: Mapping[str, InstalledPackage], record: AgentState, now: float
                 ) -> tuple[AppPlan, bool]:
    """The decision for a listed release, and whether its failure is over (it is installed)."""
    backing_off = failure is not None and now < failure.retry_at
    current, row = installed_release(app, info, installed, record)
    seen = AppPlan(app, Action.LEAVE, "", desired=rel, info=info, installed=current, row=row)
    if info is None:
        if failure is not None and backing_off:  # not even a metadata read until the retry is due
            return replace(seen, why=_backing_off(failure), until=failure.retry_at), False
        return replace(seen, action=Action.METADATA, why=f"the metadata of {rel.name} is not known yet"), False
    if current == rel.name:
        return replace(seen, why="in sync"), failure is not None
    if failure is not None and backing_off:  # no retry storm every cycle
        return replace(seen, why=_backing_off(failure), until=failure.retry_at), False
    action, why = _change(current, row, rel)
    if failure is not None:
        why = f"retry {failure.attempts + 1}: {why}"
    return replace(seen, action=action, why=why, attempt=failure.attempts + 1 if failure else 1), False


def _change(current: str | None, row: InstalledPackage | None, rel: Release) -> tuple[Action, str]:
    if current is None:
        if row is None:
            return Action.INSTALL, f"nothing installed: installing {rel.name}"
        if not row.ok:
            return Action.INSTALL, (f"{row.package} {row.version} is not fully installed "
                                    f"(dpkg: {row.status.strip()}): installing {rel.name}")
        return Action.INSTALL, f"{row.package} {row.version} is no release Push installed: installing {rel.name}"
    try:
        old = Release.parse(current)
    except InvalidRelease:
        return Action.INSTALL, f"the record names {current!r}, not a release: installing {rel.name}"
    if (rel.time, rel.name) > (old.time, old.name):
        return Action.UPGRADE, f"{current} -> {rel.name}"
    return Action.DOWNGRADE, f"{current} -> {rel.name} (a rollback)"


# Removal is explicit (docs/pulld.md#removal): only the placeholder "APP/" removes an app. An
# installed app the file does not mention at all is left running and reported unmanaged, so a
# missing, emptied or wrong server file can never uninstall a fleet.


def _placeholder(app: str, failure: Failure | None, installed: Mapping[str, InstalledPackage],
                 record: AgentState, now: float) -> AppPlan:
    """`APP/`: nothing of APP here. What Push installed for it is removed; an app Push never
    installed here (the original tools' "nothing chosen") needs nothing."""
    current, row = installed_release(app, None, installed, record)
    rec = record.apps.get(app)
    seen = AppPlan(app, Action.LEAVE, f"{app}/ in the server file: nothing of it here", installed=current, row=row)
    if rec is None:
        return seen
    if failure is not None and now < failure.retry_at:
        return replace(seen, why=f"removal {_backing_off(failure)}", until=failure.retry_at)
    why = (f"{app}/ in the server file: removing {', '.join(rec.packages)}" if rec.packages
           else f"{app}/ in the server file, and nothing of it installed: forgetting it")
    if failure is not None:
        why = f"retry {failure.attempts + 1}: {why}"
    return replace(seen, action=Action.REMOVE, why=why, attempt=failure.attempts + 1 if failure else 1)


def _not_listed(app: str, installed: Mapping[str, InstalledPackage], record: AgentState) -> AppPlan:
    """An app Push installed that the file does not mention: left installed and running, and
    reported unmanaged (a record with nothing installed is forgotten)."""
    current, row = installed_release(app, None, installed, record)
    seen = AppPlan(app, Action.LEAVE, "", listed=False, installed=current, row=row)
    if not record.apps[app].packages and row is None:
        return replace(seen, action=Action.REMOVE, why="not in the server file, and nothing of it installed: "
                                                       "forgetting it")
    return replace(seen, unmanaged=True,
                   why=f"not in the server file: left running, unmanaged (only {app}/ in the file removes it)")


def _without_file(app: str, installed: Mapping[str, InstalledPackage], record: AgentState) -> AppPlan:
    current, row = installed_release(app, None, installed, record)
    return AppPlan(app, Action.LEAVE, "no server file to follow: left as it is", listed=False,
                   installed=current, row=row)
