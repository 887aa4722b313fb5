"""`push status|history|deploy|rollback|remove|unit|resign`: read and change the fleet from the command line.

Two ways, same checks, same history, same output: through a push server (`--push-url` /
PUSH_URL, with an API token from PUSH_TOKEN), or straight to the bucket with push.fleet
(skiapush.conf is then read locally and enforced the same way; GCE triggers are sent from
here, and push servers notice the change at their next bucket poll). Every command that
reads or changes the fleet (and `push releases`, `push completion`'s values) takes one of
the two from `backend(args)`, so none can read the bucket when a push server was named.
A release is named as push.lookup says (full name, hash prefix, latest, previous): the
names are passed on as they are and resolved by push.fleet, here or in the push server.
Straight to the bucket, a deploy key (--deploy-key / PUSH_DEPLOY_KEY) signs each server
file written, and `push resign` renews the statements of a fleet without a push server
(docs/trust.md).
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
    InvalidStoreURL,
    NoSuchPage,
    NotFound,
    PushError,
    StoreUnavailable,
    Unauthenticated,
    error_class,
)
from push.exits import PROBLEMS, USAGE, exit_code

if TYPE_CHECKING:  # the model is imported when a command runs, so `push --help` stays fast
    import httpx

    from push.fleet import Change, EverywherePlan, FleetDeploy
    from push.fleetstate import FleetState, ReleaseEntry
    from push.history import Record
    from push.store import Store

T = TypeVar("T")


def remote_options() -> argparse.ArgumentParser:
    """--push-url, --token and --json: every command that reads or changes the fleet takes them."""
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--push-url", metavar="URL", default=os.environ.get("PUSH_URL"),
                        help="go through this push server (default: $PUSH_URL; unset: straight to the bucket)")
    remote.add_argument("--token", default=None,
                        help="API token for --push-url (default: $PUSH_TOKEN; prefer the variable, "
                             "arguments are visible to other users)")
    remote.add_argument("--json", action="store_true", help="print JSON")
    return remote


RELEASE_HELP = "the release: its full name, 7+ hex digits of its git hash, latest or previous"


def wait_options() -> argparse.ArgumentParser:
    """--wait and --timeout: deploy, rollback and remove follow what they changed (push.follow)."""
    wait = argparse.ArgumentParser(add_help=False)
    wait.add_argument("--wait", action="store_true",
                      help="then follow each server changed until its app is done (installed and healthy, or "
                           "removed): exit 0; exit 8 if it fails (failed, refused, reverted, unhealthy), 9 if it "
                           "is stuck (past its deadline, its agent stale) or --timeout passes. A live line per "
                           "server on a terminal, a line per change otherwise")
    wait.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                      help="with --wait: give up after this long (default: the progress deadline of each app, "
                           "300 s after the change or its release's health deadline + 30 s)")
    return wait


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    remote = remote_options()
    # Commands that write server files sign them when they go straight to the bucket
    # (through a push server, the push server signs with its own deploy key).
    signer = argparse.ArgumentParser(add_help=False)
    signer.add_argument("--deploy-key", metavar="FILE", default=os.environ.get("PUSH_DEPLOY_KEY") or None,
                        help="sign the server file written with this deploy key (NAME.key) when going straight to "
                             "the bucket (default: $PUSH_DEPLOY_KEY; not used through a push server, which signs "
                             "with its own). See docs/trust.md")

    p = sub.add_parser("status", parents=[common, remote], help="what every server should run and runs",
                       description="Show every server in skiapush.conf (or SERVER) with each app: the desired "
                                   "release, what its agent reports installed, unit states, when it last "
                                   "reported, and marks (out_of_date, dirty, drift, failed, ...). With "
                                   f"--problems, exits {PROBLEMS} when any server shown has a problem.")
    p.add_argument("server", nargs="?", help="only this server")
    p.add_argument("--app", help="only apps whose name contains APP")
    p.add_argument("--problems", action="store_true",
                   help=f"only servers with problems; exit {PROBLEMS} if there are any")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("history", parents=[common, remote], help="who changed what, when",
                       description="Every change (deploy, rollback, remove, unit requests), newest first, "
                                   "of the fleet or of SERVER.")
    p.add_argument("server", nargs="?", help="only this server")
    p.add_argument("--app", help="only this app")
    p.add_argument("--limit", type=int, default=50, help="at most this many records (default: 50)")
    p.set_defaults(func=cmd_history)

    wait = wait_options()
    p = sub.add_parser("deploy", parents=[common, remote, signer, wait], help="deploy a release of an app to a server",
                       usage="push deploy [options] SERVER APP (RELEASE | --latest)\n"
                             "       push deploy [options] --all-servers APP (RELEASE | --latest)",
                       description="Make SERVER run RELEASE of APP (or its newest release with --latest). "
                                   "skiapush.conf must allow APP on SERVER. The change is recorded in the "
                                   "history and the server's agent is triggered. With --all-servers, deploy "
                                   "RELEASE to every server that runs APP: the servers and what each runs are "
                                   "shown and confirmed first (--yes: without asking), and exactly those "
                                   "change, each only if it still runs what was shown. RELEASE is its full "
                                   "name, 7+ hex digits of its git hash, latest or previous.")
    p.add_argument("server", metavar="SERVER", help="the server (with --all-servers: the app)")
    p.add_argument("app", metavar="APP", help="the app (with --all-servers: the release)")
    p.add_argument("release", metavar="RELEASE", nargs="?", help=RELEASE_HELP)
    p.add_argument("--latest", action="store_true", help="the newest release of APP")
    p.add_argument("--all-servers", action="store_true", help="every server that runs APP (confirmed first)")
    p.add_argument("-y", "--yes", action="store_true", help="with --all-servers: do not ask")
    p.add_argument("--expect", metavar="RELEASE",
                   help="only if SERVER still runs this release (any name but previous; 'none': nothing), "
                        "else exit 3")
    p.add_argument("--note", default="", help="why (kept in the history)")
    p.set_defaults(func=cmd_deploy, parser=p)

    p = sub.add_parser("rollback", parents=[common, remote, signer, wait],
                       help="return an app to the release it ran before",
                       description="Return APP on SERVER to the release it ran before the current one, as the "
                                   "history records it (not merely the second newest release).")
    p.add_argument("server")
    p.add_argument("app")
    p.add_argument("--note", default="", help="why (kept in the history)")
    p.set_defaults(func=cmd_rollback, parser=p)

    p = sub.add_parser("remove", parents=[common, remote, signer, wait], help="take an app off a server",
                       description='Take APP off SERVER: writes the placeholder "APP/" into its server file, '
                                   "and its agent then removes what it installed for APP. An app the file "
                                   "does not mention is left running (unmanaged); this is how to remove it. "
                                   "Works for apps skiapush.conf no longer allows there, so they can be cleaned "
                                   "up. Recorded in the history; needs the admin role through a push server.")
    p.add_argument("server")
    p.add_argument("app")
    p.add_argument("--expect", metavar="RELEASE",
                   help="only if SERVER still runs this release ('none': nothing), else exit 3")
    p.add_argument("--note", default="", help="why (kept in the history)")
    p.set_defaults(func=cmd_remove, parser=p)

    p = sub.add_parser("unit", parents=[common, remote], help="start, stop or restart a unit on a server",
                       description="Ask SERVER's agent to start, stop or restart UNIT (a unit of an app "
                                   "skiapush.conf allows there). Recorded in the history.")
    p.add_argument("server")
    p.add_argument("unit")
    p.add_argument("action", choices=["start", "stop", "restart"])
    p.add_argument("--note", default="", help="why (kept in the history)")
    p.set_defaults(func=cmd_unit)

    p = sub.add_parser("resign", parents=[common], help="re-sign server files before their statements expire",
                       description=RESIGN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("servers", nargs="*", metavar="SERVER", help="only these servers (default: every server in "
                                                                "skiapush.conf)")
    p.add_argument("--deploy-key", metavar="FILE", default=os.environ.get("PUSH_DEPLOY_KEY") or None,
                   help="the deploy key that signs (NAME.key; default: $PUSH_DEPLOY_KEY)")
    p.add_argument("--trust-deploy-key", action="append", metavar="FILE", default=None,
                   help="also renew statements signed by this public key (NAME.pub): the old key, during a "
                        "rotation; repeatable (default: $PUSH_TRUST_DEPLOY_KEYS, space-separated)")
    p.add_argument("--adopt", action="store_true",
                   help="sign the current contents of the named servers whatever their statement (the first "
                        "signing of a fleet, an expired statement, an edit you checked); needs SERVER")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_resign)


RESIGN_DESCRIPTION = """Renew the statements of server files (signatures/server/NAME.json) that have passed half
their life, or were signed by another trusted key (rotation), straight in the bucket. For
a fleet without a push server (which does this on its own poll): run it at least every 12
hours, e.g. from cron, or agents that verify refuse the expired statements and keep what
they run.

Only a statement that verifies (signed by --deploy-key or a --trust-deploy-key), names
the file's current bytes and has not expired is renewed: a server file edited straight in
the bucket, or an old one put back, is never signed this way. Those are listed as refused
(exit 1). --adopt SERVER signs what the file holds now, after you have checked it.
"""


# -- the two ways to reach the fleet ----------------------------------------------------------
# Both answer with the model's own objects (push.fleetstate, push.history, push.fleet), which
# the commands print: the JSON of a fact is the same whichever way it came.


def open_existing_store(url: str | None) -> Store:
    """The store named by --store / PUSH_STORE (else the default), which must exist: a
    mistyped path is an error, never an empty fleet (exit 4)."""
    from push.store import default_store_url, open_store
    from push.store.local import LocalStore

    store = open_store(url)
    if isinstance(store, LocalStore) and not store.root.is_dir():
        given = url or os.environ.get("PUSH_STORE")
        where = f"--store {given}" if given else f"the default store {default_store_url()} (no --store, PUSH_STORE)"
        raise StoreUnavailable(f"no store at {store.root}: the directory does not exist ({where})",
                               store=store.url)
    return store


class Direct:
    """Straight to the bucket, with push.fleet: the same code the push server runs."""

    def __init__(self, args: argparse.Namespace, *, config_required: bool = True) -> None:
        from push import config as config_mod
        from push import fleet

        config = config_mod.load(args.config, required=config_required)
        self.fleet = fleet
        deploy_key = getattr(args, "deploy_key", None)
        self.ctx = fleet.direct_context(open_existing_store(args.store), config, via=f"cli@{socket.gethostname()}",
                                        deploy_key=_deploy_key(deploy_key) if deploy_key else None)
        # Webhooks of [notify] hear of this command's changes; close() waits a little for them.
        from push.notify import Notifier

        self.ctx.notifier = Notifier.from_config(config)
        self.who = os.environ.get("PUSH_USER") or f"{getpass.getuser()}@{socket.gethostname()}"
        self._view: Any = None  # the fleet view --wait keeps looking at

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

    def progress(self, app: str, server: str | None) -> FleetState:
        """The state of `app` (on `server`, else everywhere) now: one view, looked at again
        through the change journal each time (one listing page when nothing changed)."""
        from push.fleetview import FleetView

        if self._view is None:
            self._view = FleetView(self.ctx)
        else:
            self._view.refresh(include_catalog=False)
        state: FleetState = self._view.state(server, app)
        return state

    def history(self, server: str | None, app: str | None, limit: int) -> list[Record]:
        if server is not None:
            self.ctx.config.require_server(server)
        if app is not None:
            self.fleet.require_app(self.ctx, app)
        return self.ctx.history.records(server, app, limit=limit)

    def releases(self, app: str | None) -> list[ReleaseEntry]:
        from push.fleetstate import ReleaseEntry

        if app is not None:
            self.fleet.require_app(self.ctx, app)
        catalog = self.ctx.catalog
        releases = catalog.releases(app)
        if catalog.skipped:
            why = next(iter(catalog.skipped.values()))
            print(f"push: warning: skipped {len(catalog.skipped)} object(s) under debs/ that are not valid "
                  f"releases, e.g. {why}", file=sys.stderr)
        return [ReleaseEntry.of(r) for r in releases]

    def servers(self) -> list[str]:
        return list(self.ctx.config.servers)

    def apps(self) -> list[str]:
        from push import lookup

        return lookup.known_apps(self.ctx.catalog, self.ctx.config)

    def deploy(self, server: str, app: str, release: str | None, latest: bool, expect: Any, note: str) -> Change:
        expected = self.fleet.ANY if expect is _UNSET else expect
        return self.fleet.deploy(self.ctx, self.who, server, app, release, latest=latest,
                                 expected_from=expected, note=note)

    def plan_everywhere(self, app: str, release: str) -> EverywherePlan:
        return self.fleet.plan_everywhere(self.ctx, app, release)

    def deploy_everywhere(self, plan: EverywherePlan, note: str) -> FleetDeploy:
        return self.fleet.deploy_everywhere(self.ctx, self.who, plan.app, plan.release,
                                            expected=plan.servers, note=note)

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
        from push.notify import CLI_FLUSH_SECONDS

        self.ctx.notifier.close(timeout=CLI_FLUSH_SECONDS)
        self.ctx.store.close()


# For an answer whose `type` names no error this version knows (a newer push server).
_BY_STATUS: dict[int, type[PushError]] = {400: InvalidInput, 401: Unauthenticated, 403: AccessDenied,
                                          404: NotFound, 409: Conflict, 503: StoreUnavailable}


def _error_from_answer(status: int, body: object, url: str) -> PushError:
    """The error the push server answered with, as the same class: by its `type`, else by status."""
    import push.fleet  # noqa: F401 - defines ChangedMeanwhile (and push.lookup UnknownApp), which the server may name

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
        raise InvalidStoreURL("--push-url is not a URL: expected http(s)://HOST[:PORT]") from None
    host = parts.netloc.rpartition("@")[2]
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidStoreURL(f"--push-url must not carry credentials ({parts.scheme}://…@{host}): "
                              "send an API token with --token or PUSH_TOKEN instead")
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidStoreURL(f"--push-url must be http(s)://HOST[:PORT], not {url.strip()!r}")
    return url.strip().rstrip("/")


def _what_answered(response: httpx.Response) -> str:
    """One line on what answered: status, content type, the server's name and a page title."""
    import re

    kind = response.headers.get("content-type", "no content type").split(";")[0]
    parts = [f"HTTP {response.status_code}", kind]
    if response.headers.get("server"):
        parts.append(f"server {response.headers['server'][:40]!r}")
    title = re.search(r"<title[^>]*>([^<]{1,80})", response.text[:4096], re.IGNORECASE)
    if title and title.group(1).strip():
        parts.append(f"page {' '.join(title.group(1).split())!r}")
    return ", ".join(parts)


def _root_of(url: str) -> str:
    """The push server's root URL likely meant by `url`: before its API path, else its host."""
    from urllib.parse import urlsplit

    if "/api/" in url:
        return url.split("/api/", 1)[0]
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class NotAPushServer(StoreUnavailable):
    """--push-url names something that answers, but not as a push server does."""


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
        # A push server answers JSON, and its refusals name their error; anything else (a
        # web page, another service's JSON) is not Push: say what answered, in one line.
        is_json = r.headers.get("content-type", "").split(";")[0].strip() == "application/json"
        body: Any = None
        if is_json:
            try:
                body = r.json()
            except ValueError:
                is_json = False
        refusal = isinstance(body, dict) and isinstance(body.get("error"), str)
        if not is_json or (r.status_code >= 400 and not refusal and r.status_code != 422):
            raise NotAPushServer(f"{self.url} is not a Push server: {method} {path} answered {_what_answered(r)}",
                                 store=self.url)
        if r.status_code >= 400:
            error = _error_from_answer(r.status_code, body, self.url)
            root = _root_of(self.url)
            if isinstance(error, NoSuchPage) and root != self.url:
                # A page's or the API's URL given for the push server's own.
                raise NotAPushServer(f"{self.url} is a Push server's page, not its root URL: "
                                     f"give --push-url {root}", store=self.url)
            raise error
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

    def progress(self, app: str, server: str | None) -> FleetState:
        """The state of `app` (on `server`, else everywhere) as the push server sees it now."""
        from push.fleetstate import FleetState

        params = {"app": app, "server": server or ""}
        return self._answer(FleetState, self._call("GET", "/api/v1/fleet", params=params))

    def history(self, server: str | None, app: str | None, limit: int) -> list[Record]:
        from push.history import Record

        params = {k: v for k, v in (("server", server), ("app", app)) if v}
        return self._answer(list[Record], self._call("GET", "/api/v1/history", params={**params, "limit": limit}))

    def releases(self, app: str | None) -> list[ReleaseEntry]:
        from push.fleetstate import ReleaseEntry

        # A ReleaseState answer read as ReleaseEntry: the entry's fields, the rest ignored.
        apps = [app] if app is not None else self.apps()
        entries = [e for a in apps
                   for e in self._answer(list[ReleaseEntry], self._call("GET", f"/api/v1/apps/{a}/releases"))]
        return sorted(entries, key=lambda e: (e.datetime, e.name), reverse=True)  # as the catalogue orders them

    def servers(self) -> list[str]:
        return [s.server for s in self.status(None, None).servers]

    def apps(self) -> list[str]:
        from push.fleetstate import AppSummary

        return [a.app for a in self._answer(list[AppSummary], self._call("GET", "/api/v1/apps"))]

    def deploy(self, server: str, app: str, release: str | None, latest: bool, expect: Any, note: str) -> Change:
        from push.fleet import Change

        body: dict[str, Any] = {"release": release, "latest": latest, "note": note}
        if expect is not _UNSET:
            body["expected_from"] = expect
        return self._answer(Change, self._call("POST", f"/api/v1/servers/{server}/apps/{app}/deploy", json=body))

    def plan_everywhere(self, app: str, release: str) -> EverywherePlan:
        from push.fleet import EverywherePlan

        return self._answer(EverywherePlan, self._call("GET", f"/api/v1/apps/{app}/deploy-all",
                                                       params={"release": release}))

    def deploy_everywhere(self, plan: EverywherePlan, note: str) -> FleetDeploy:
        from push.fleet import FleetDeploy

        body = {"release": plan.release, "expected": plan.servers, "note": note}
        return self._answer(FleetDeploy, self._call("POST", f"/api/v1/apps/{plan.app}/deploy-all", json=body))

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


def _deploy_key(path: str) -> Any:
    from pathlib import Path

    from push.signing import SigningKey

    return SigningKey.load(Path(path))


@contextlib.contextmanager
def backend(args: argparse.Namespace, *, config_required: bool = True) -> Iterator[Direct | Remote]:
    """The push server (--push-url / PUSH_URL) or the bucket, closed when the command is done."""
    if args.push_url:
        chosen: Direct | Remote = Remote(args.push_url, args.token or os.environ.get("PUSH_TOKEN"))
    else:
        chosen = Direct(args, config_required=config_required)
    try:
        yield chosen
    finally:
        chosen.close()


def _short(name: str | None) -> str:
    from push.release import short

    return short(name)


# -- the commands ------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    with backend(args) as fleet:
        state = fleet.status(args.server, args.app)
    servers = state.servers
    if args.server:
        servers = [s for s in servers if s.server == args.server]
    if args.problems:
        servers = [s for s in servers if s.problems]
    # --problems answers "is anything wrong?" in its exit code too, for scripts and checks.
    outcome = PROBLEMS if args.problems and servers else 0
    if args.json:
        print_json(state.model_copy(update={"count": len(servers), "servers": servers}).to_json())
        return outcome
    for s in servers:
        seen = f"last seen {s.last_seen[:19].replace('T', ' ')}Z" if s.last_seen else "no agent report"
        flags = f" STALE: {s.stale_reason}" if s.stale else ""
        print(f"{s.server}  ({seen}{flags})  {s.progress}")
        for err in (s.agent_error, s.file_error):
            if err:
                print(_indented(f"  ! {err}", "    "))
        for a in s.apps:
            actual = "same" if a.actual and a.actual == a.desired else (
                _short(a.actual) if a.actual else ("none" if s.last_seen else "?"))
            marks = f"  [{', '.join(m.replace('_', ' ') for m in a.marks)}]" if a.marks else ""
            units = " ".join(f"{u}={st}" for u, st in a.units.items())
            print(f"  {a.app:<16} desired {_short(a.desired):<38} actual {actual}{marks}")
            if units:
                print(f"  {'':<16} units {units}")
            if a.progress != "done":
                print(_indented(f"  {'':<16} {a.progress}: {a.progress_reason}", " " * 21))
            elif a.error:
                print(_indented(f"  {'':<16} failed: {a.error}", " " * 21))
    return outcome


def _indented(text: str, indent: str) -> str:
    """`text` with its later lines indented (a reason's log lines stay under their app)."""
    first, *rest = text.splitlines() or [""]
    return "\n".join([first, *(indent + line for line in rest)])


def cmd_history(args: argparse.Namespace) -> int:
    with backend(args) as fleet:
        records = fleet.history(args.server, args.app, args.limit)
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


def _usage(args: argparse.Namespace, message: str) -> int:
    """A bad command line found after parsing: argparse's own form, exit 2."""
    args.parser.print_usage(sys.stderr)
    print(f"{args.parser.prog}: error: {message}", file=sys.stderr)
    return USAGE


def _expectation(args: argparse.Namespace) -> Any:
    return _UNSET if args.expect is None else (None if args.expect == "none" else args.expect)


def cmd_deploy(args: argparse.Namespace) -> int:
    if args.timeout is not None and not args.wait:
        return _usage(args, "--timeout is for --wait")
    if args.all_servers:
        return _deploy_everywhere(args)
    if args.latest == bool(args.release):
        return _usage(args, "give a RELEASE or --latest (one of them)")
    with backend(args) as fleet:
        change = fleet.deploy(args.server, args.app, args.release, args.latest, _expectation(args), args.note)
        _print_change(args, change)
        return _wait(args, fleet, change.app, [change.server])


def _confirmed(question: str) -> bool:
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    try:
        return input().strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _deploy_everywhere(args: argparse.Namespace) -> int:
    """`push deploy --all-servers APP RELEASE`: the guard of the web UI's deploy-everywhere.
    The servers and what each runs are shown and confirmed, then sent back as `expected`,
    so exactly those servers change, each only if it still runs what was shown."""
    from push.fleet import Refused

    app, release = args.server, args.app  # the positionals shift: no SERVER
    if args.release is not None or args.latest == (release is not None):
        return _usage(args, "with --all-servers: push deploy --all-servers APP (RELEASE | --latest)")
    if args.expect is not None:
        return _usage(args, "--expect is for one server; --all-servers expects what it shows")
    if not args.yes and not sys.stdin.isatty():
        return _usage(args, "--all-servers asks before deploying: give --yes where there is no terminal")
    with backend(args) as fleet:
        plan = fleet.plan_everywhere(app, "latest" if args.latest else release)
        if not plan.servers:
            print(f"no server runs {app}: nothing to deploy (push deploy SERVER {app} ... for a first deploy)",
                  file=sys.stderr)
            return 1
        print(f"deploy {_short(plan.release)} to every server that runs {app}:", file=sys.stderr)
        for server, current in plan.servers.items():
            same = "  (already)" if current == plan.release else ""
            print(f"  {server:<24} {_short(current)}{same}", file=sys.stderr)
        if not args.yes and not _confirmed(f"deploy to these {len(plan.servers)} server(s)?"):
            print("push: nothing deployed", file=sys.stderr)
            return 1
        result = fleet.deploy_everywhere(plan, args.note)
        if args.json:
            print_json(result.to_json())
        code = 0
        for o in result.outcomes:
            if isinstance(o, Refused):
                cls = error_class(o.type) or PushError
                code = code or exit_code(cls(o.error))
                if not args.json:
                    print(f"{o.server}: not deployed: {o.error}")
            elif not args.json:
                _print_change(args, o)
        # The servers deployed to are followed; a refusal's own code wins.
        waited = _wait(args, fleet, app, [o.server for o in result.outcomes if not isinstance(o, Refused)])
        return code or waited


def _wait(args: argparse.Namespace, fleet: Direct | Remote, app: str, servers: list[str]) -> int:
    """With --wait: follow `app` on `servers` until each is done, failed or stuck (push.follow)."""
    from push.follow import follow

    if not args.wait:
        return 0
    out = sys.stderr if args.json else sys.stdout  # --json keeps stdout one JSON document
    server = servers[0] if len(servers) == 1 else None
    # (the server filter is a substring: follow picks the exact names out)
    return follow([(s, app) for s in servers], lambda: fleet.progress(app, server), out=out,
                  live=out.isatty() and os.environ.get("TERM") != "dumb", timeout=args.timeout)


def cmd_rollback(args: argparse.Namespace) -> int:
    if args.timeout is not None and not args.wait:
        return _usage(args, "--timeout is for --wait")
    with backend(args) as fleet:
        change = fleet.rollback(args.server, args.app, args.note)
        _print_change(args, change)
        return _wait(args, fleet, change.app, [change.server])


def cmd_remove(args: argparse.Namespace) -> int:
    if args.timeout is not None and not args.wait:
        return _usage(args, "--timeout is for --wait")
    with backend(args) as fleet:
        change = fleet.remove(args.server, args.app, _expectation(args), args.note)
        _print_change(args, change)
        return _wait(args, fleet, change.app, [change.server])


def cmd_unit(args: argparse.Namespace) -> int:
    with backend(args) as fleet:
        change = fleet.unit(args.server, args.unit, args.action, args.note)
    _print_change(args, change)
    return 0


def cmd_resign(args: argparse.Namespace) -> int:
    from pathlib import Path

    from push import config as config_mod
    from push.serversigning import Resigner
    from push.signing import Keyring

    if not args.deploy_key:
        print("push resign: error: no deploy key: give --deploy-key FILE or set PUSH_DEPLOY_KEY", file=sys.stderr)
        return 2
    if args.adopt and not args.servers:
        print("push resign: error: --adopt signs what a file holds now: name the SERVERs you checked",
              file=sys.stderr)
        return 2
    key = _deploy_key(args.deploy_key)
    trusted = args.trust_deploy_key or os.environ.get("PUSH_TRUST_DEPLOY_KEYS", "").split()
    config = config_mod.load(args.config, required=True)
    servers = args.servers or list(config.servers)
    for server in args.servers:
        config.require_server(server)
    store = open_existing_store(args.store)
    try:
        resigner = Resigner(store, key, Keyring.load([Path(p) for p in trusted]) if trusted else None)
        outcomes = [resigner.resign(server, adopt=args.adopt) for server in servers]
    finally:
        store.close()
    if args.json:
        print_json([{"server": o.server, "action": o.action, "why": o.why, "version": o.version} for o in outcomes])
    else:
        for o in outcomes:
            detail = f": {o.why}" if o.why else (f" (version {o.version})" if o.version else "")
            print(f"{o.server}: {o.action}{detail}")
    return 1 if any(o.action == "refused" for o in outcomes) else 0
