"""skiapush.conf: which apps may go on which servers, and who may do what.

The original form works unchanged:

    [servers.skia-push]
    appNames = ["logserver", "pulld", "push"]

Push adds optional tables (access rules, API tokens, triggers, notifications); see docs/configuration.md.
An invalid file is refused at load with the file, the line where TOML gives one, and what
is wrong.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from push.errors import InvalidConfig, InvalidName, NotAllowed, UnknownServer
from push.names import check_app, check_server
from push.notify.settings import NotifySettings
from push.notify.settings import parse as parse_notify

SEARCH_PATH = (Path("skiapush.conf"), Path("/etc/push/skiapush.conf"))
ROLES = ("view", "deploy", "admin")


@dataclass(frozen=True)
class Token:
    """An API token: only the sha256 of its secret is kept in the config."""

    name: str
    sha256: str
    identity: str


@dataclass(frozen=True)
class Config:
    path: Path | None
    servers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # role -> identities. An identity is an email, "@domain" for a whole domain, or "*".
    access: dict[str, tuple[str, ...]] = field(default_factory=dict)
    tokens: tuple[Token, ...] = ()
    # Optional GCE trigger settings: project, zone, compute_endpoint.
    gce: dict[str, str] = field(default_factory=dict)
    # Webhooks told of every change (push.notify, docs/notifications.md).
    notify: NotifySettings = field(default_factory=NotifySettings)

    def apps_for(self, server: str) -> tuple[str, ...]:
        return self.servers.get(server, ())

    def require_server(self, server: str) -> tuple[str, ...]:
        """The apps allowed on `server`; UnknownServer if the config does not list it."""
        apps = self.servers.get(check_server(server))
        if apps is None:
            raise UnknownServer(f"server {server!r} is not in {self.source}", server=server, source=self.source)
        return apps

    def check_allowed(self, server: str, app: str) -> None:
        """UnknownServer, or NotAllowed unless the config allows `app` on `server`."""
        if check_app(app) not in self.require_server(server):
            raise NotAllowed(f"app {app!r} may not be deployed to {server!r} (see {self.source})",
                             server=server, app=app)

    def may(self, identity: str, role: str) -> bool:
        """Whether `identity` holds `role`; admin implies deploy, deploy implies view."""
        if role not in ROLES:
            raise ValueError(role)
        granted = ROLES[ROLES.index(role):]
        for r in granted:
            for rule in self.access.get(r, ()):
                if rule == "*" or rule == identity or (rule.startswith("@") and identity.endswith(rule)):
                    return True
        return False

    @property
    def source(self) -> str:
        return str(self.path) if self.path else "the config"


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """--config, else PUSH_CONFIG, else ./skiapush.conf, else /etc/push/skiapush.conf."""
    given = explicit or os.environ.get("PUSH_CONFIG")
    if given:
        path = Path(given)
        if not path.is_file():
            raise InvalidConfig(f"config file {path} does not exist", path=str(path))
        return path
    for path in SEARCH_PATH:
        if path.is_file():
            return path
    return None


def load(explicit: str | os.PathLike[str] | None = None, *, required: bool = False) -> Config:
    path = find_config(explicit)
    if path is None:
        if required:
            raise InvalidConfig("no skiapush.conf found "
                                "(use --config, PUSH_CONFIG, ./skiapush.conf or /etc/push/skiapush.conf)")
        return Config(path=None)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidConfig(f"{path}: cannot read: {e}", path=str(path)) from None
    return parse(text, path)


def parse(text: str, path: Path | None = None) -> Config:
    where = str(path) if path else "<config>"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # TOML's message already ends with "(at line L, column C)".
        raise InvalidConfig(f"{where}: invalid TOML: {e}", path=where) from None

    def fail(what: str, near: str | None = None) -> InvalidConfig:
        # The line: of `near` if given, else of the first quoted word of the message.
        line = _line_of(text, near if near is not None else what.split("'")[1] if "'" in what else "")
        return InvalidConfig(f"{where}{f':{line}' if line else ''}: {what}", path=where)

    unknown = set(doc) - {"servers", "access", "tokens", "gce", "notify"}
    if unknown:
        raise fail(f"unknown table '{sorted(unknown)[0]}' (known: servers, access, tokens, gce, notify)")

    servers: dict[str, tuple[str, ...]] = {}
    raw_servers = doc.get("servers", {})
    if not isinstance(raw_servers, dict):
        raise fail("'servers' must be a table of [servers.NAME] tables")
    for name, table in raw_servers.items():
        try:
            check_server(name)
        except InvalidName as e:
            raise fail(f"server '{name}': {e}") from None
        if not isinstance(table, dict):
            raise fail(f"servers.'{name}' must be a table with appNames")
        extra = set(table) - {"appNames"}
        if extra:
            raise fail(f"servers.{name}: unknown key '{sorted(extra)[0]}' (known: appNames)")
        apps = table.get("appNames", [])
        if not isinstance(apps, list) or not all(isinstance(a, str) for a in apps):
            raise fail(f"servers.{name}: 'appNames' must be a list of app names")
        for app in apps:
            try:
                check_app(app)
            except InvalidName as e:
                raise fail(f"servers.{name}: '{app}': {e}") from None
        servers[name] = tuple(dict.fromkeys(apps))

    access: dict[str, tuple[str, ...]] = {}
    raw_access = doc.get("access", {})
    if not isinstance(raw_access, dict):
        raise fail("'access' must be a table")
    for role, who in raw_access.items():
        if role not in ROLES:
            raise fail(f"access: unknown role '{role}' (known: {', '.join(ROLES)})")
        if not isinstance(who, list) or not all(isinstance(w, str) and w for w in who):
            raise fail(f"access.{role}: must be a list of identities ('user@example.com', '@example.com' or '*')")
        access[role] = tuple(who)

    tokens: list[Token] = []
    raw_tokens = doc.get("tokens", [])
    if not isinstance(raw_tokens, list):
        raise fail("'tokens' must be an array of [[tokens]] tables")
    for t in raw_tokens:
        if not isinstance(t, dict) or set(t) != {"name", "sha256", "identity"}:
            raise fail("each [[tokens]] needs exactly 'name', 'sha256' and 'identity'")
        if not all(isinstance(v, str) for v in t.values()) or not re.fullmatch(r"[0-9a-f]{64}", t["sha256"]):
            raise fail(f"tokens: '{t.get('name')}': sha256 must be the 64-hex sha256 of the token")
        tokens.append(Token(t["name"], t["sha256"], t["identity"]))

    gce = doc.get("gce", {})
    if not isinstance(gce, dict) or not all(isinstance(v, str) for v in gce.values()):
        raise fail("'gce' must be a table of strings (project, zone, compute_endpoint)")
    extra = set(gce) - {"project", "zone", "compute_endpoint"}
    if extra:
        raise fail(f"gce: unknown key '{sorted(extra)[0]}' (known: project, zone, compute_endpoint)")

    notify = parse_notify(doc.get("notify", {}), fail)

    return Config(path=path, servers=servers, access=access, tokens=tuple(tokens), gce=dict(gce), notify=notify)


def _line_of(text: str, needle: str) -> int | None:
    if not needle:
        return None
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return number
    return None
