"""The events Push sends to webhooks: one JSON object per event, the same for every kind.

    {"kind": "deploy", "id": "01796893456789012345-1a2b3c4d", "time": "2026-12-02T04:30:00.123456Z",
     "who": "alice@example.com", "text": "alice@example.com deployed hello ... to web-1",
     "server": "web-1", "app": "hello", "release": "hello/hello:...deb", "previous": null,
     "history": "01796893456789000000-0a0b0c0d", "note": "", "via": "cli@laptop", "rollout": null}

The envelope (`kind`, `id`, `time`, `who`, `text`) is in every event; the other keys are
the subject's (docs/notifications.md lists them per kind). `id` is unique per event and
kept across retries, so a receiver can drop a duplicate. `text` is one line for people
(chat services that show a `text` field show it as is). Built by push.notify.Notifier.emit;
`change_fields` is what push.fleet passes for a deploy, rollback or removal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from push import timestamps
from push.history import Record
from push.release import short

ENVELOPE = ("kind", "id", "time", "who", "text")
_VERBS = {"deploy": "deployed", "rollback": "rolled back", "remove": "removed"}


def change_fields(record: Record) -> dict[str, object]:
    """The subject of a deploy, rollback or remove event: the change's history record."""
    return {"who": record.who, "server": record.server, "app": record.app, "release": record.to,
            "previous": record.from_, "history": record.id, "note": record.note, "via": record.via,
            # The rollout that made the change (Record.rollout, issue 13); null for a plain one.
            "rollout": getattr(record, "rollout", None)}


def build(kind: str, fields: Mapping[str, object]) -> dict[str, Any]:
    """One event: the envelope, then the subject fields (a field named like an envelope key
    other than `who` is left out: the envelope is Push's)."""
    who = fields.get("who")
    event: dict[str, Any] = {"kind": kind, "id": timestamps.new_id(), "time": timestamps.now_text(),
                             "who": who if isinstance(who, str) else "", "text": ""}
    event.update((k, v) for k, v in fields.items() if k not in ENVELOPE)
    event["text"] = text(event)
    return event


def encode(event: Mapping[str, Any]) -> bytes:
    """The body POSTed: compact JSON; what JSON cannot say (a datetime) as its str()."""
    return json.dumps(event, default=str, ensure_ascii=False, separators=(",", ":")).encode()


def text(event: Mapping[str, Any]) -> str:
    """One line saying what happened, for people."""
    kind, who, app = event["kind"], event["who"] or "someone", event.get("app", "?")
    if kind in _VERBS:
        server, to, was = event.get("server", "?"), _short(event.get("release")), _short(event.get("previous"))
        if kind == "remove":
            return f"{who} removed {app} from {server} (was {was})"
        return f"{who} {_VERBS[kind]} {app} on {server} to {to} (was {was})"
    what = kind.removeprefix("rollout.").replace("_", " ")
    line = f"rollout {event.get('rollout', '?')} of {_short(event.get('release'))} {what}"
    if event["who"]:
        line += f" by {event['who']}"
    if event.get("wave") is not None:
        line += f" (wave {event['wave']})"
    servers = event.get("servers")
    if isinstance(servers, list | tuple) and servers:
        shown = ", ".join(str(s) for s in servers[:5])
        line += f" on {shown}{f' and {len(servers) - 5} more' if len(servers) > 5 else ''}"
    if isinstance(event.get("reason"), str) and event["reason"]:
        line += f": {event['reason']}"
    return line


def _short(name: object) -> str:
    """A release as people read it (push.release.short), from an event's untyped field."""
    return short(name) if isinstance(name, str) and name else "nothing"
