"""Finding what a user named: an app (with near names when there is none), and a release by
any of the names people use for it.

The one resolver of release names: push.fleet calls it for every operation, so the CLI
(straight to the bucket, or through a push server, which runs push.fleet), the API and the
web pages' URLs all accept the same names. A release is named by

- its full name (`app/app:user@host:time:hash.deb`, what `push releases` prints),
- a unique prefix of its git hash, 7 to 40 hex digits (`9c64614`, what the CLI shows);
  a prefix several releases share is refused, listing them,
- `latest`: the newest release of the app,
- `previous`: what the app ran on that server before its current release, by the history
  (exactly where `push rollback` would return it).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable

from push.catalog import Catalog
from push.config import Config
from push.errors import InvalidRelease, InvalidRequest, NotFound
from push.names import check_app
from push.release import Release, ReleaseInfo, app_of

LATEST = "latest"
PREVIOUS = "previous"
MIN_PREFIX = 7
_HEX = re.compile(r"[0-9a-fA-F]+")


class UnknownApp(NotFound):
    """No release of the app and no server's appNames lists it (.app, .near: similar names)."""

    def __init__(self, message: str, *, app: str | None = None, near: list[str] | None = None) -> None:
        super().__init__(message)
        self.app = app
        self.near = near or []


class AmbiguousRelease(InvalidRelease):
    """A hash prefix that names more than one release (.matches: their full names)."""

    def __init__(self, message: str, *, name: str | None = None, matches: list[str] | None = None) -> None:
        super().__init__(message, name=name)
        self.matches = matches or []


def known_apps(catalog: Catalog, config: Config) -> list[str]:
    """Every app with a release in the bucket or in some server's appNames."""
    return sorted(set(catalog.apps()).union(*config.servers.values()))


def near_names(name: str, known: list[str]) -> list[str]:
    """Up to three of `known` that look like `name` (a typo, a missing suffix)."""
    return difflib.get_close_matches(name, known, n=3, cutoff=0.6)


def did_you_mean(near: list[str]) -> str:
    return f"; did you mean {' or '.join(near)}?" if near else ""


def require_app(catalog: Catalog, config: Config, app: str) -> str:
    """`app` if Push knows it (a release, or a server's appNames); UnknownApp otherwise,
    suggesting near names."""
    check_app(app)
    # An app some server's appNames lists is known: found without sorting every app there
    # is (a fleet-wide deploy asks once per server).
    if any(app in apps for apps in config.servers.values()):
        return app
    known = known_apps(catalog, config)
    if app in known:
        return app
    catalog.refresh()  # its first release may be newer than the catalogue's last look
    known = known_apps(catalog, config)
    if app in known:
        return app
    near = near_names(app, known)
    raise UnknownApp(f"no such app {app!r}: no release of it in {catalog.store.url} and no server's "
                     f"appNames in {config.source} lists it{did_you_mean(near)}", app=app, near=near)


def release(catalog: Catalog, app: str, name: str, *,
            previous: Callable[[], str] | None = None) -> ReleaseInfo:
    """The release of `app` that `name` names (see the module docstring).

    `previous` answers what ran before on the server in question; without it (no server:
    a fleet-wide deploy) `previous` is refused. NotFound if nothing matches, AmbiguousRelease
    for a shared prefix, InvalidRelease for what is no release name at all.
    """
    check_app(app)
    if name == LATEST:
        catalog.refresh()
        return catalog.latest(app)
    if name == PREVIOUS:
        if previous is None:
            raise InvalidRequest("'previous' names what ran before on one server: give a server, or another name")
        return catalog.get(previous())
    if "/" in name or ":" in name:
        if app_of(name) != app:
            raise InvalidRequest(f"release {name!r} is not a release of {app!r}")
        Release.parse(name)
        return catalog.get(name)
    if not _HEX.fullmatch(name) or len(name) < MIN_PREFIX or len(name) > 40:
        raise InvalidRelease(f"{name!r} names no release: give its full name, {MIN_PREFIX} or more hex digits "
                             f"of its git hash, {LATEST} or {PREVIOUS}", name=name)
    prefix = name.lower()
    matches = [r for r in catalog.releases(app) if r.release.hash.startswith(prefix)]
    if not matches:  # uploaded since the catalogue last looked?
        catalog.refresh()
        matches = [r for r in catalog.releases(app) if r.release.hash.startswith(prefix)]
    if not matches:
        raise NotFound(f"no release of {app} has a git hash starting {prefix} (see `push releases {app}`)")
    if len(matches) > 1:
        names = [r.name for r in matches]
        raise AmbiguousRelease(f"{prefix} names {len(names)} releases of {app}: {', '.join(names)}; "
                               "give more of the hash or the full name", name=name, matches=names)
    return matches[0]
