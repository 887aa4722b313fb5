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
    secret_file = "/etc/push/hooks/chat.secret"   # optional: sign each POST (or secret_env = "VAR")

push.config parses the file and hands this table to `parse`, so an invalid table is
refused at load like any other, with the line. push.notify.Notifier reads the result.
A webhook's URL often holds a secret (chat services put the token in the path), so only
its `name` (default: the URL's host) ever appears in logs, metrics and errors.
A webhook's signing secret is read here, at load, from a file or the environment (never
written in skiapush.conf); it appears nowhere but in the HMAC (push.notify.signature).
"""

from __future__ import annotations

import os
import re
import stat
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
_WEBHOOK_KEYS = ("url", "name", "kinds", "format", "secret_file", "secret_env")
MAX_SECRET = 4096   # bytes: a bigger "secret" is the wrong file (a log, a device)
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
    # Signs each POST (push.notify.signature) when set; kept out of repr, so out of any log.
    secret: bytes | None = field(default=None, repr=False)

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
    return Webhook(url=url, name=name, kinds=tuple(kinds), format=form, secret=_secret(hook, where, fail))


def _secret(hook: Mapping[str, object], where: str, fail: Fail) -> bytes | None:
    """The webhook's signing secret, from `secret_file` or `secret_env`; None without either.
    Whitespace around it (the newline of `echo`) is not part of it. Errors name the key and
    the file or variable, never what it holds."""
    if "secret_file" in hook and "secret_env" in hook:
        raise fail(f"{where}: give 'secret_file' or 'secret_env', not both", near=str(hook["secret_env"]))
    if "secret_file" in hook:
        path = hook["secret_file"]
        if not isinstance(path, str) or not os.path.isabs(path):
            raise fail(f"{where}: 'secret_file' must be the absolute path of a file holding the secret",
                       near=path if isinstance(path, str) and path else "secret_file")
        try:
            # Checked before reading: a FIFO or a device would block or never end.
            if not stat.S_ISREG(os.stat(path).st_mode):
                raise fail(f"{where}: 'secret_file' {path} is not a regular file", near=path)
            with open(path, "rb") as f:
                secret = f.read(MAX_SECRET + 1).strip()
        except OSError as e:
            raise fail(f"{where}: 'secret_file' {path} cannot be read: {e.strerror}", near=path) from None
        if not secret:
            raise fail(f"{where}: 'secret_file' {path} is empty", near=path)
        if len(secret) > MAX_SECRET:
            raise fail(f"{where}: 'secret_file' {path} holds more than {MAX_SECRET} bytes: not a secret",
                       near=path)
        return secret
    if "secret_env" in hook:
        var = hook["secret_env"]
        if not isinstance(var, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
            raise fail(f"{where}: 'secret_env' must be the name of an environment variable (letters, digits, _)",
                       near=var if isinstance(var, str) and var else "secret_env")
        value = os.environb.get(os.fsencode(var), b"").strip()
        if not value:
            raise fail(f"{where}: 'secret_env': the environment variable {var} is not set, or empty",
                       near=var)
        if len(value) > MAX_SECRET:
            raise fail(f"{where}: 'secret_env': {var} holds more than {MAX_SECRET} bytes: not a secret", near=var)
        return value
    return None
