"""The named errors of Push: one tree, each raised where the fault is known.

Every error a user can hit is a PushError whose str() is one clear line; the context a
caller may act on (the key, the server, the app, ...) is kept as attributes. Errors are
mapped once at each edge, by class, most specific first: to exit codes in `push.exits`
(push and pulld) and to HTTP statuses in `push.server.app`. The push server sends
`{"error": message, "type": class name}`, and the CLI's remote client rebuilds the same
class from that name (`error_class`).

    PushError
    ├── InvalidInput            what was given cannot be used
    │   ├── InvalidName         an app, server, unit, user or host name (.kind, .value)
    │   ├── InvalidKey          an object key that is not a safe relative path (.key)
    │   ├── InvalidRelease      a release name or release metadata off the format (.name)
    │   │   └── AmbiguousRelease  (push.lookup) a hash prefix several releases share (.matches)
    │   ├── InvalidRelation     a Debian dependency (push.debian)
    │   ├── InvalidConfig       skiapush.conf (.path)
    │   ├── InvalidStoreURL     a --store / PUSH_STORE value (.url)
    │   ├── InvalidSigningKey   a key file of push.signing that cannot be used (.path)
    │   └── InvalidRequest      an operation asked for wrongly (unknown action, ...)
    ├── InvalidData             an object in the bucket that is not what Push writes (.key)
    │   └── InvalidServerFile   server/{name}.json (.server)
    ├── NotFound                no such object, release, app or history (.key)
    │   ├── UnknownServer       a server skiapush.conf does not list (.server, .source)
    │   └── UnknownApp          (push.lookup) no release and no server's appNames (.app, .near)
    ├── Conflict                someone else changed it first: nothing was written (.key)
    │   └── ChangedMeanwhile    (push.fleet) an app's entry is not what the user saw
    ├── AccessDenied            who is asking may not do this
    │   ├── Unauthenticated     no identity, or an unknown token
    │   └── NotAllowed          skiapush.conf or the caller's role refuses it (.server, .app)
    ├── StoreError              the store failed, not the request (.store, .key)
    │   ├── StoreUnavailable    unreachable, credentials refused, disk full, a strange answer
    │   └── CorruptObject       an object failed its checksum, or its local file is damaged
    ├── Untrusted               a signed statement (push.signing) does not hold (.reason)
    ├── BuildError              (push.builder.errors) `push release` cannot build or check
    ├── TriggerFailed           (push.triggers) the Compute API refused a pushrev write
    ├── DemoError               (push.demo.run) `push demo` could not run
    └── AgentError              (push.agent.errors) pulld: one release or one step failed
        ├── DpkgError           dpkg, dpkg-deb or apt-get failed (.stderr, .returncode)
        │   └── DpkgLocked      another dpkg holds the lock
        ├── DependencyMissing   a Depends that cannot be met
        ├── VerificationFailed  a download that does not match its metadata
        ├── DiskFull            no room for a download
        ├── UnitError           the service manager failed
        └── AgentStateError     the agent's own state directory is locked or unreadable

Store backends let only these escape (see push.store.base), so a caller never needs to
catch a client library's exceptions.
"""

from __future__ import annotations


class PushError(Exception):
    """Base of every error a user can hit; its str() is one clear line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- bad input ---------------------------------------------------------------------------


class InvalidInput(PushError):
    """What was given (a name, a file, an option, a request) cannot be used."""


class InvalidName(InvalidInput):
    """An app, server, unit, user or host name that breaks the rules of docs/names.md."""

    def __init__(self, message: str, *, kind: str | None = None, value: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.value = value


class InvalidKey(InvalidInput):
    """An object key that is not a safe relative path."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class InvalidRelease(InvalidInput):
    """A release name or release metadata that does not follow the format."""

    def __init__(self, message: str, *, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class InvalidConfig(InvalidInput):
    """A skiapush.conf that cannot be used; the message names the file and line."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class InvalidStoreURL(InvalidInput):
    """A --store / PUSH_STORE value with an unknown scheme or a bad form."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class InvalidRequest(InvalidInput):
    """An operation asked for wrongly: an unknown action, a release of another app, ..."""


# -- bad data in the bucket --------------------------------------------------------------


class InvalidData(PushError):
    """An object in the bucket that is not what Push writes (a damaged record or report)."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class InvalidServerFile(InvalidData):
    """A server/{name}.json that is not a JSON array of release names."""

    def __init__(self, message: str, *, key: str | None = None, server: str | None = None) -> None:
        super().__init__(message, key=key)
        self.server = server


# -- missing, changed, refused -----------------------------------------------------------


class NotFound(PushError):
    """An object, release, server or app that does not exist."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class NoSuchPage(NotFound):
    """A path the push server serves nothing at (the CLI tells a --push-url with a wrong path by it)."""


class UnknownServer(NotFound):
    """A server that skiapush.conf does not list."""

    def __init__(self, message: str, *, server: str | None = None, source: str | None = None) -> None:
        super().__init__(message)
        self.server = server
        self.source = source


class Conflict(PushError):
    """A precondition failed: someone else changed the object first; nothing was written."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class AccessDenied(PushError):
    """Whoever is asking may not do this."""


class Unauthenticated(AccessDenied):
    """No identity, or an unknown token."""


class NotAllowed(AccessDenied):
    """The config does not allow this app on this server, or this user this action."""

    def __init__(self, message: str, *, server: str | None = None, app: str | None = None) -> None:
        super().__init__(message)
        self.server = server
        self.app = app


# -- the store ---------------------------------------------------------------------------


class StoreError(PushError):
    """The store failed (not the request): `store` is its URL, `key` the object if one."""

    def __init__(self, message: str, *, store: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.store = store
        self.key = key


class StoreUnavailable(StoreError):
    """The store cannot be reached, refused our credentials, is full, or answered strangely."""


class CorruptObject(StoreError):
    """An object failed its checksum on the way, or its local file is damaged."""


class InvalidSigningKey(InvalidInput):
    """A signing or trusted key file that cannot be used: missing, of the wrong kind, or
    readable by others (push.signing)."""


class Untrusted(PushError):
    """A release or server file whose signed statement does not hold; the message says why.

    `reason` is a short word for reports and the fleet view: unsigned, malformed,
    unknown-key, revoked-key, bad-signature, wrong-server, digest-mismatch, rollback, expired.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def error_class(name: str) -> type[PushError] | None:
    """The PushError subclass called `name` (as the push server's `type` says), if loaded.

    Subclasses defined outside this module (ChangedMeanwhile, BuildError, the agent's) are
    found once their modules are imported.
    """
    pending: list[type[PushError]] = [PushError]
    while pending:
        cls = pending.pop()
        if cls.__name__ == name:
            return cls
        pending.extend(cls.__subclasses__())
    return None
