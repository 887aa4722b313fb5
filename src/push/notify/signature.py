"""Signed deliveries: how a receiver knows an event came from Push and is not a replay.

A webhook with a secret (`secret_file` or `secret_env` in [notify], push.notify.settings)
gets two more headers on every POST:

    X-Push-Timestamp: 1796186203                      (Unix seconds, when this attempt was sent)
    X-Push-Signature-256: sha256=<hex HMAC-SHA256 of the secret over b"<timestamp>." + body>

Each attempt is signed afresh with its own time, so that a receiver can refuse any request
older than a few minutes (docs/notifications.md recommends 5) and still take a retry sent
30 s after the first attempt; the event's `id` (the same in every attempt) lets it drop a
repeat inside that window. Used by push.notify.delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "X-Push-Timestamp"
SIGNATURE_HEADER = "X-Push-Signature-256"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The X-Push-Signature-256 value of `body` sent at `timestamp`."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def headers(secret: bytes, body: bytes, now: float | None = None) -> dict[str, str]:
    """The two headers of one attempt to POST `body`, signed at `now` (default: the clock)."""
    timestamp = int(time.time() if now is None else now)
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(secret, timestamp, body)}
