"""The named errors of Push, raised where a fault is known.

Each carries a message a user can act on. They are mapped once, at the edges, to exit
codes (cli) and HTTP status codes (server); nowhere else catches them to reword them.
"""

from __future__ import annotations


class PushError(Exception):
    """Base of every error a user can hit; its str() is one clear line."""

    exit_code = 1
    http_status = 400


class NotFound(PushError):
    """An object, release, server or app that does not exist."""

    http_status = 404


class Conflict(PushError):
    """A precondition failed: someone else changed the object first."""

    exit_code = 3
    http_status = 409


class StoreUnavailable(PushError):
    """The store cannot be reached, or refused our credentials."""

    exit_code = 4
    http_status = 503


class InvalidStoreURL(PushError):
    """A --store / PUSH_STORE value with an unknown scheme or a bad form."""

    exit_code = 2


class InvalidRelease(PushError):
    """A release name or release metadata that does not follow the format."""


class InvalidServerFile(PushError):
    """A server/{name}.json that is not a JSON array of release names."""


class InvalidConfig(PushError):
    """A skiapush.conf that cannot be used; the message names the file and line."""

    exit_code = 2


class NotAllowed(PushError):
    """The config does not allow this app on this server, or this user this action."""

    exit_code = 5
    http_status = 403


class Unauthenticated(PushError):
    """No identity, or an unknown token."""

    exit_code = 5
    http_status = 401
