"""`push status|history|deploy|rollback|unit`: read and change the fleet from the command line.

Two ways, same checks, same history, same output: through a push server (`--push-url` /
PUSH_URL, with an API token from PUSH_TOKEN), or straight to the bucket with push.fleet
(skiapush.conf is then read locally and enforced the same way; GCE triggers are sent from
here, and push servers notice the change at their next bucket poll).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import socket
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from push.cli import print_json
from push.errors import (
    AccessDenied,
    Conflict,
    InvalidInput,
    NotFound,
    PushError,
    StoreUnavailable,
    Unauthenticated,
    error_class,
)

if TYPE_CHECKING:  # the model is imported when a command runs, so `push --help` stays fast
    from push.fleet import Change
    from push.fleetstate import FleetState
    from push.history import Record

T = TypeVar("T")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--push-url", metavar="URL", default=os.environ.get("PUSH_URL"),
                        help="go through this push server (default: $PUSH_URL; unset: straight to the bucket)")
    remote.add_argument("--token", default=None,
                        help="API token for --push-url (default: $PUSH_TOKEN; prefer the variable, "
                             "arguments are visible to other users)")
    remote.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("status", parents=[common, remote], help="what every server should run and runs",
                       description="Show every server in skiapush.conf (or SERVER) with each app: the desired "
                                   "release, what its agent reports installed, unit states, when it last "
                                   "reported, and marks (out_of_date, dirty, drift, failed, ...).")
    p.add_argument("server", nargs="?", help="only this server")
    p.add_argument("--app", help="only apps whose name contains APP")
    p.add_argument("--problems", action="store_true", help="only servers with problems")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("history", parents=[common, remote], help="who changed what, when",
                       description="Every change (deploy, rollback, remove, unit requests), newest first, "
                                   "of the fleet or of SERVER.")
    p.add_argument("server", nargs="?", help="only this server")
    p.add_argument("--app", help="only this app")
    p.add_argument("--limit", type=int, default=50, help="at most this many records (default: 50)")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("deploy", parents=[common, remote], help="deploy a release of an app to a server",
                       description="Make SERVER run RELEASE of APP (or its newest release with --latest). "
                                   "skiapush.conf must allow APP on SERVER. The change is recorded in the "
                                   "history and the server's agent is triggered.")
    p.add_argument("server")
    p.add_argument("app")
    p.add_argument("release", nargs="?", help="release name (see `push releases APP`)")
    p.add_argument("--latest", action="store_true", help="the newest release of APP")
    p.add_argument("--expect", metavar="RELEASE",
                   help="only if SERVER still runs this release ('none': nothing), else exit 3")
    p.add_argument("--note", default="", help="why (kept in the history)")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("rollback", parents=[common, remote], help="return an app to the release it ran before",
                       description="Return APP on SERVER to the release it ran before the current one, as the "
                                   "history records it (not merely the second newest release).")
    p.add_argument("server")
    p.add_argument("app")
    p.add_argument("--note", default="", help="why (kept in the history)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("remove", parents=[common, remote], help="take an app off a server",
                       description='Take APP off SERVER: writes the placeholder "APP/" into its server file, '
                                   "and its agent then removes what it installed for APP. An app the file "
                                   "does not mention is left running (unmanaged); this is how to remove it. "
                                   "Needs the admin role through a push server.")
    p.add_argument("server")
    p.add_argument("app")
    p.add_argument("--expect", metavar="RELEASE",
                   help="only if SERVER still runs this release ('none': nothing), else exit 3")
    p.add_argument("--note", default="", help="why (kept in the history)")
    p.set_defaults(func=cmd_remove)

    p = sub.add_parser("unit", parents=[common, remote], help="start, stop or restart a unit on a server",
                       description="Ask SERVER's agent to start, stop or restart UNIT (a unit of an app "
                                   "skiapush.conf allows there). Recorded in the history.")
    p.add_argument("server")
    p.add_argument("unit")
    p.add_argument("action", choices=["start", "stop", "restart"])
    p.add_argument("--note", default="", help="why (kept in the history)")
    p.set_defaults(func=cmd_unit)


# -- the two ways to reach the fleet ----------------------------------------------------------
# Both answer with the model's own objects (push.fleetstate, push.history, push.fleet), which
# the commands print: the JSON of a fact is the same whichever way it came.


class Direct:
    """Straight to the bucket, with push.fleet: the same code the push server runs."""

    def __init__(self, args: argparse.Namespace) -> None:
        from push import config as config_mod
        from push import fleet
        from push.store import open_store

        config = config_mod.load(args.config, required=True)
        self.fleet = fleet
        self.ctx = fleet.direct_context(open_store(args.store), config, via=f"cli@{socket.gethostname()}")
        self.who = os.environ.get("PUSH_USER") or f"{getpass.getuser()}@{socket.gethostname()}"

    def status(self, server: str | None, app: str | None) -> FleetState:
        from push.fleetview import FleetView

        if server is not None:
            self.ctx.config.require_server(server)
        view = FleetView(self.ctx)
        state = view.state(None, app)
        if view.snapshot.empty and not self.ctx.catalog.releases():
            # A typo in --store, a wrong bucket, a mount that failed: say so rather than show
            # a fleet of servers that merely never reported.
            print(f"push: warning: {self.ctx.store.url} holds no server files, agent reports or releases: "
                  "is --store / PUSH_STORE right?", file=sys.stderr)
        problems = view.problems()
        if problems:
            first = next(iter(problems))
            print(f"push: warning: {len(problems)} object(s) in the bucket cannot be read and were skipped "
                  f"(first: {first}: {problems[first]})", file=sys.stderr)
        return state

    def history(self, server: str | None, app: str | None, limit: int) -> list[Record]:
        return self.ctx.history.records(server, app, limit=limit)

    def deploy(self, server: str, app: str, release: str | None, latest: bool, expect: Any, note: str) -> Change:
        expected = self.fleet.ANY if expect is _UNSET else expect
        return self.fleet.deploy(self.ctx, self.who, server, app, release, latest=latest,
                                 expected_from=expected, note=note)

    def rollback(self, server: str, app: str, note: str) -> Change:
        return self.fleet.rollback(self.ctx, self.who, server, app, note=note)

    def remove(self, server: str, app: str, expect: Any, note: str) -> Change:
        expected = self.fleet.ANY if expect is _UNSET else expect
        return self.fleet.remove(self.ctx, self.who, server, app, expected_from=expected, note=note)

    def unit(self, server: str, unit: str, action: str, note: str) -> Change:
        return self.fleet.unit_action(self.ctx, self.who, server, unit, action, note=note)

    def close(self) -> None:
        if self.ctx.triggers is not None:
            self.ctx.triggers.close()


# For an answer whose `type` names no error this version knows (a newer push server).
_BY_STATUS: dict[int, type[PushError]] = {400: InvalidInput, 401: Unauthenticated, 403: AccessDenied,
                                          404: NotFound, 409: Conflict, 503: StoreUnavailable}


def _error_from_answer(status: int, body: object, url: str) -> PushError:
    """The error the push server answered with, as the same class: by its `type`, else by status."""
    import push.fleet  # noqa: F401 - defines ChangedMeanwhile, which the server may name

    message, cls = f"HTTP {status}: {json.dumps(body)[:200]}", None  # e.g. FastAPI's 422 {"detail": ...}
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
        cls = error_class(str(body.get("type", "")))
    if cls is None:
        cls = _BY_STATUS.get(status, StoreUnavailable if status >= 500 else PushError)
    return cls(f"{message} (push server {url})")


def push_url(url: str) -> str:
    """A --push-url / PUSH_URL, checked: http(s)://HOST[:PORT][/PATH], never with credentials
    (they would be echoed in every message and sent on every request; use PUSH_TOKEN). The
    refusal never prints what came before the '@'."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise InvalidInput("--push-url is not a URL: expected http(s)://HOST[:PORT]") from None
    host = parts.netloc.rpartition("@")[2]
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidInput(f"--push-url must not carry credentials ({parts.scheme}://…@{host}): "
                             "send an API token with --token or PUSH_TOKEN instead")
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidInput(f"--push-url must be http(s)://HOST[:PORT], not {parts.scheme or 'no scheme'}://{host}")
    return url.strip().rstrip("/")


class Remote:
    """Through a push server's JSON API, with an API token; answers parsed into the model."""

    def __init__(self, url: str, token: str | None) -> None:
        import httpx

        self.url = push_url(url)
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=60.0)

    def _call(self, method: str, path: str, **kwargs: Any) -> bytes:
        import httpx

        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise StoreUnavailable(f"cannot reach the push server {self.url}: {e}") from None
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"error": f"HTTP {r.status_code}: {r.text[:200]}"}
            raise _error_from_answer(r.status_code, body, self.url)
        return r.content

    def _answer(self, kind: type[T], data: bytes) -> T:
        """The answer parsed into the model; a push server answering otherwise is a fault."""
        from pydantic import TypeAdapter, ValidationError

        try:
            return TypeAdapter(kind).validate_json(data)
        except ValidationError as e:
            raise StoreUnavailable(f"the push server {self.url} answered what this push cannot read: "
                                   f"{e.errors(include_url=False)[0]['msg']}") from None

    def status(self, server: str | None, app: str | None) -> FleetState:
        from push.fleetstate import FleetState

        if server is not None:
            self._call("GET", f"/api/v1/servers/{server}")  # UnknownServer unless skiapush.conf lists it
        return self._answer(FleetState, self._call("GET", "/api/v1/fleet", params={"app": app or ""}))

    def history(self, server: str | None, app: str | None, limit: int) -> list[Record]:
        from push.history import Record

        params = {k: v for k, v in (("server", server), ("app", app)) if v}
        return self._answer(list[Record], self._call("GET", "/api/v1/history", params={**params, "limit": limit}))

    def deploy(self, server: str, app: str, release: str | None, latest: bool, expect: Any, note: str) -> Change:
        from push.fleet import Change

        body: dict[str, Any] = {"release": release, "latest": latest, "note": note}
        if expect is not _UNSET:
            body["expected_from"] = expect
        return self._answer(Change, self._call("POST", f"/api/v1/servers/{server}/apps/{app}/deploy", json=body))

    def rollback(self, server: str, app: str, note: str) -> Change:
        from push.fleet import Change

        return self._answer(Change, self._call("POST", f"/api/v1/servers/{server}/apps/{app}/rollback",
                                               json={"note": note}))

    def remove(self, server: str, app: str, expect: Any, note: str) -> Change:
        from push.fleet import Change

        body: dict[str, Any] = {"note": note}
        if expect is not _UNSET:
            body["expected_from"] = expect
        return self._answer(Change, self._call("POST", f"/api/v1/servers/{server}/apps/{app}/remove", json=body))

    def unit(self, server: str, unit: str, action: str, note: str) -> Change:
        from push.fleet import Change

        return self._answer(Change, self._call("POST", f"/api/v1/servers/{server}/units/{unit}/{action}",
                                               json={"note": note}))

    def close(self) -> None:
        self.http.close()


_UNSET = object()


@contextlib.contextmanager
def _backend(args: argparse.Namespace) -> Iterator[Direct | Remote]:
    """The push server (--push-url) or the bucket, closed when the command is done."""
    backend = Remote(args.push_url, args.token or os.environ.get("PUSH_TOKEN")) if args.push_url else Direct(args)
    try:
        yield backend
    finally:
        backend.close()


def _short(name: str | None) -> str:
    from push.fleet import short

    return short(name)


# -- the commands ------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    with _backend(args) as backend:
        state = backend.status(args.server, args.app)
    servers = state.servers
    if args.server:
        servers = [s for s in servers if s.server == args.server]
    if args.problems:
        servers = [s for s in servers if s.problems]
    if args.json:
        print_json(state.model_copy(update={"count": len(servers), "servers": servers}).to_json())
        return 0
    for s in servers:
        seen = f"last seen {s.last_seen[:19].replace('T', ' ')}Z" if s.last_seen else "no agent report"
        flags = " STALE" if s.stale else ""
        print(f"{s.server}  ({seen}{flags})")
        for err in (s.agent_error, s.file_error):
            if err:
                print(f"  ! {err}")
        for a in s.apps:
            actual = "same" if a.actual and a.actual == a.desired else (
                _short(a.actual) if a.actual else ("none" if s.last_seen else "?"))
            marks = f"  [{', '.join(m.replace('_', ' ') for m in a.marks)}]" if a.marks else ""
            units = " ".join(f"{u}={st}" for u, st in a.units.items())
            print(f"  {a.app:<16} desired {_short(a.desired):<38} actual {actual}{marks}")
            if units:
                print(f"  {'':<16} units {units}")
            if a.error:
                print(f"  {'':<16} failed: {a.error}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    with _backend(args) as backend:
        records = backend.history(args.server, args.app, args.limit)
    if args.json:
        print_json([r.to_json() for r in records])
        return 0
    if not records:
        print("no changes recorded", file=sys.stderr)
    for r in records:
        what = r.unit if r.unit else f"{_short(r.from_)} -> {_short(r.to)}"
        note = f"  \u201c{r.note}\u201d" if r.note else ""
        print(f"{r.time[:19].replace('T', ' ')}Z  {r.who:<22} {r.server:<12} {r.app:<12} "
              f"{r.action:<12} {what}{note}")
    return 0


def _print_change(args: argparse.Namespace, change: Change) -> None:
    if args.json:
        print_json(change.to_json())
    elif change.request is not None:
        print(f"asked the agent on {change.server} to {change.action[5:]} {change.request.unit}")
    elif not change.changed and change.action == "remove":
        print(f'{change.server}\'s server file already says "{change.app}/": nothing changed')
    elif not change.changed:
        print(f"{change.app} on {change.server} already runs {_short(change.to)}: nothing changed")
    elif change.action == "remove":
        print(f'removed {change.app} from {change.server}: {_short(change.from_)} -> "{change.app}/" '
              "(its agent removes it)")
    else:
        verb = "rolled back" if change.action == "rollback" else "deployed"
        print(f"{verb} {change.app} on {change.server}: {_short(change.from_)} -> {_short(change.to)}")


def cmd_deploy(args: argparse.Namespace) -> int:
    if args.latest == bool(args.release):
        print("push deploy: error: give a RELEASE or --latest (one of them)", file=sys.stderr)
        return 2
    expect: Any = _UNSET if args.expect is None else (None if args.expect == "none" else args.expect)
    with _backend(args) as backend:
        change = backend.deploy(args.server, args.app, args.release, args.latest, expect, args.note)
    _print_change(args, change)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    with _backend(args) as backend:
        change = backend.rollback(args.server, args.app, args.note)
    _print_change(args, change)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    expect: Any = _UNSET if args.expect is None else (None if args.expect == "none" else args.expect)
    with _backend(args) as backend:
        change = backend.remove(args.server, args.app, expect, args.note)
    _print_change(args, change)
    return 0


def cmd_unit(args: argparse.Namespace) -> int:
    with _backend(args) as backend:
        change = backend.unit(args.server, args.unit, args.action, args.note)
    _print_change(args, change)
    return 0
