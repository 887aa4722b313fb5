"""The `[notify]` table of skiapush.conf: which webhooks get which events, and how hard
Push tries to deliver them.

    [notify]
    timeout = 5          # seconds per POST (default 5)
    attempts = 5         # POSTs per event and webhook before it is dropped (default 5)

    [[notify.webhooks]]
    url = "https://chat.example.com/hooks/T0/B0/secret"
    name = "chat"                          # optional: the label in logs and /metrics
    kinds = ["deploy", "rollback", "rollout.*"]   # optional: default every kind
    format = "text"                        # optional: {"text": "one line"} only (default "event")

push.config parses the file and hands this table to `parse`, so an invalid table is
refused at load like any other, with the line. push.notify.Notifier reads the result.
A webhook's URL often holds a secret (chat services put the token in the path), so only
its `name` (default: the URL's host) ever appears in logs, metrics and errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Protocol
from urllib.parse import urlsplit

from push.errors import InvalidConfig

# Every kind of event Push sends (docs/notifications.md has the schema of each).
CHANGE_KINDS = ("deploy", "rollback", "remove")
ROLLOUT_KINDS = ("rollout.started", "rollout.wave_done", "rollout.failed", "rollout.rolled_back",
                 "rollout.completed", "rollout.aborted")
KINDS = CHANGE_KINDS + ROLLOUT_KINDS

DEFAULT_TIMEOUT = 5.0
DEFAULT_ATTEMPTS = 5
MAX_TIMEOUT = 60.0
MAX_ATTEMPTS = 10
_KEYS = ("timeout", "attempts", "webhooks")
_WEBHOOK_KEYS = ("url", "name", "kinds", "format")
FORMATS = ("event", "text")


class Fail(Protocol):
    """push.config's error builder: the message, and the line of `near` (default: of the
    message's first quoted word)."""

    def __call__(self, what: str, near: str | None = None) -> InvalidConfig: ...


@dataclass(frozen=True)
class Webhook:
    """One receiver: where to POST, its label, and the kinds it gets (patterns: `rollout.*`)."""

    url: str
    name: str
    kinds: tuple[str, ...] = ("*",)
    # "event": the whole JSON event; "text": {"text": its one line}, for chat services
    # that refuse keys they do not know.
    format: str = "event"

    def wants(self, kind: str) -> bool:
        return any(fnmatchcase(kind, pattern) for pattern in self.kinds)


@dataclass(frozen=True)
class NotifySettings:
    """The parsed `[notify]` table; no webhooks means no notifications at all."""

    webhooks: tuple[Webhook, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    attempts: int = DEFAULT_ATTEMPTS
    # Events waiting per webhook; beyond this the newest are dropped (counted, logged).
    queue_size: int = field(default=1000)


def parse(raw: object, fail: Fail) -> NotifySettings:
    """The `[notify]` table `raw` (as tomllib read it), checked; `fail(message)` builds the
    error with its line."""
    if not isinstance(raw, Mapping):
        raise fail("'notify' must be a table ([notify] with timeout, attempts and [[notify.webhooks]])")
    extra = set(raw) - set(_KEYS)
    if extra:
        raise fail(f"notify: unknown key '{sorted(extra)[0]}' (known: {', '.join(_KEYS)})")
    timeout = raw.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT:
        raise fail(f"notify: 'timeout' must be a number of seconds, above 0 and at most {MAX_TIMEOUT:g}")
    attempts = raw.get("attempts", DEFAULT_ATTEMPTS)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= MAX_ATTEMPTS:
        raise fail(f"notify: 'attempts' must be a whole number from 1 to {MAX_ATTEMPTS}")
    hooks = raw.get("webhooks", [])
    if not isinstance(hooks, list):
        raise fail("notify: 'webhooks' must be an array of [[notify.webhooks]] tables")
    webhooks: list[Webhook] = []
    for number, hook in enumerate(hooks, 1):
        webhooks.append(_webhook(hook, number, fail, {w.name for w in webhooks}))
    return NotifySettings(webhooks=tuple(webhooks), timeout=float(timeout), attempts=attempts)


def _webhook(hook: object, number: int, fail: Fail, taken: set[str]) -> Webhook:
    where = f"notify.webhooks #{number}"
    if not isinstance(hook, Mapping):
        raise fail(f"{where}: each of 'webhooks' must be a table with url (and name, kinds)")
    extra = set(hook) - set(_WEBHOOK_KEYS)
    if extra:
        raise fail(f"{where}: unknown key '{sorted(extra)[0]}' (known: {', '.join(_WEBHOOK_KEYS)})")
    url = hook.get("url")
    if not isinstance(url, str) or not url:
        raise fail(f"{where}: 'url' is required: the http:// or https:// address to POST events to")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a bad port raises here)
        good = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        good = False
    if not good:
        # The URL itself is not shown (it may hold a secret); the line says which one it is.
        raise fail(f"{where}: 'url' must be an http:// or https:// URL with a host", near=url)
    name = hook.get("name", parts.netloc.rpartition("@")[2])
    if not isinstance(name, str) or not name or not name.isprintable() or len(name) > 100:
        raise fail(f"{where}: 'name' must be a short label (shown in logs and /metrics)",
                   near=name if isinstance(name, str) and name else None)
    if name in taken:
        if "name" in hook:
            raise fail(f"{where}: name '{name}' is used by another webhook")
        name = f"{name}#{number}"
    kinds = hook.get("kinds", ["*"])
    if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) for k in kinds):
        raise fail(f"{where}: 'kinds' must be a non-empty list of event kinds (known: {', '.join(KINDS)})")
    for pattern in kinds:
        if not any(fnmatchcase(kind, pattern) for kind in KINDS):
            raise fail(f"{where}: kind '{pattern}' matches no event (known: {', '.join(KINDS)}, or a "
                       f"pattern such as 'rollout.*')")
    form = hook.get("format", "event")
    if form not in FORMATS:
        raise fail(f"{where}: 'format' must be one of {', '.join(FORMATS)}",
                   near=form if isinstance(form, str) and form else None)
    return Webhook(url=url, name=name, kinds=tuple(kinds), format=form)
