"""pulld's trust: the keys it trusts, the newest server-file version it accepted, what it refused.

Given trusted deploy keys, the agent follows `server/{server}.json` only if the statement
beside it (`signatures/server/{server}.json`) verifies (`push.signing.verify_server_file`);
given trusted release keys, the executor installs a release only if its metadata verifies
(`verify_release`) and the download is the signed file (`check_release_file`), before dpkg
sees it. Without keys a check is off, and the report says so. The newest accepted version
per server is kept in `STATE/trust.json` (temp file, fsync, rename), so an old file put
back is refused after a restart too. Used by `push.agent.agent` and `push.agent.executor`;
the design is in docs/trust.md.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from push.agent.failures import Failure
from push.errors import NotFound, Untrusted
from push.layout import server_file_key, server_signature_key
from push.release import ReleaseInfo
from push.signing import (
    Keyring,
    ReleaseStatement,
    Seen,
    ServerFileStatement,
    check_release_file,
    verify_release,
    verify_server_file,
)
from push.status import TrustStatus
from push.store import Store

log = logging.getLogger(__name__)

TRUST_FILE = "trust.json"


@dataclass(frozen=True)
class TrustOptions:
    """pulld's trust settings: public key files per role, and revoked key ids (both roles)."""

    release_keys: tuple[Path, ...] = ()
    deploy_keys: tuple[Path, ...] = ()
    revoked: tuple[str, ...] = ()


class SeenVersions:
    """The newest server-file statement accepted, per server, in STATE/trust.json:

        {"seen": {"web-1": {"version": 1796126400000, "keyid": "495b5d0bf63cbd06"}}}

    Written with a temp file, fsync and rename (then the directory fsync'd), so a crash
    leaves the old file or the new one. A missing file is a first start: nothing is
    remembered (the report says so once a statement is accepted that way). A file that
    cannot be read is never taken for a missing one: `error` is set, and the agent refuses
    every server file until an operator looks at it (removing it is the deliberate reset).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error: str | None = None
        self.missing = False
        self._seen: dict[str, Seen] = {}
        try:
            doc = json.loads(path.read_bytes())
            seen = doc["seen"]
            if not isinstance(seen, dict):
                raise TypeError("'seen' is not an object")
            self._seen = {str(server): Seen.from_json(value) for server, value in seen.items()}
        except FileNotFoundError:
            self.missing = True
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            self.error = (f"the agent's memory of accepted server-file versions, {path}, is unreadable ({e}): "
                          "every server file is refused so that an old one cannot be put back; inspect it, "
                          "then remove it to start afresh")

    def get(self, server: str) -> Seen | None:
        return self._seen.get(server)

    def record(self, server: str, seen: Seen) -> None:
        """Remember `seen` for `server` (durably, before the agent acts on the file), if it changes anything."""
        if self._seen.get(server) == seen:
            return
        data = {"seen": {s: v.to_json() for s, v in sorted({**self._seen, server: seen}.items())}}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._seen[server] = seen


@dataclass(frozen=True)
class Refusal:
    subject: str     # server/{name}.json, or a release name
    reason: str      # Untrusted.reason
    message: str
    app: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"subject": self.subject, "reason": self.reason, "message": self.message}
        return {**out, "app": self.app} if self.app else out


class Trust:
    """What one agent trusts, and what it accepted and refused."""

    def __init__(self, state_dir: Path, *, release_keys: Keyring | None = None,
                 deploy_keys: Keyring | None = None) -> None:
        self.release_keys = release_keys if release_keys else None   # an empty keyring is "off"
        self.deploy_keys = deploy_keys if deploy_keys else None
        self.seen = SeenVersions(state_dir / TRUST_FILE)
        self.accepted: tuple[ServerFileStatement, str] | None = None   # the statement followed, its key id
        self.note: str | None = None
        self._server_refusal: Refusal | None = None
        self._release_refusals: dict[str, Refusal] = {}   # by app
        self._signed: bytes | None = None                  # the stored statement as last read
        self._signed_generation: str | None = None

    @classmethod
    def load(cls, options: TrustOptions, state_dir: Path) -> Trust:
        """Load the key files (InvalidSigningKey, with the file's name, if one is not a public key)."""
        release = Keyring.load(options.release_keys, options.revoked) if options.release_keys else None
        deploy = Keyring.load(options.deploy_keys, options.revoked) if options.deploy_keys else None
        if options.revoked and release is None and deploy is None:
            Keyring((), options.revoked)  # still check the ids: a typo must not pass unnoticed
        return cls(state_dir, release_keys=release, deploy_keys=deploy)

    # -- server files -----------------------------------------------------------------------

    def check_server_file(self, store: Store, server: str, data: bytes) -> str | None:
        """None when `data`, the bytes of server/{server}.json, may be followed; else the step's error.

        Reads the statement conditionally (nothing is downloaded while it is unchanged) and
        verifies it every step, so an expiry is noticed even when nothing changes. Store
        errors propagate (PushError).
        """
        if self.deploy_keys is None:
            return None
        key = server_file_key(server)
        signed = self._read_statement(store, server)
        try:
            if self.seen.error is not None:
                raise Untrusted("state-unreadable", self.seen.error)
            parsed = verify_server_file(server, data, signed, self.deploy_keys, self.seen.get(server))
        except Untrusted as e:
            if self._server_refusal is None or self._server_refusal.message != str(e):
                log.warning("server file refused", extra={"event": "trust.refused", "subject": key,
                                                          "reason": e.reason, "error": str(e)})
            self._server_refusal = Refusal(key, e.reason, str(e))
            return f"untrusted ({e.reason}): {e}"
        before = self.seen.get(server)
        try:
            self.seen.record(server, Seen.of(parsed))
        except OSError as e:  # never act on a file whose version is not remembered
            return f"cannot record the accepted version of {key} in {self.seen.path}: {e}"
        if before is None and self.seen.missing and self.note is None:
            self.note = (f"no memory of earlier versions ({self.seen.path} was missing): accepted version "
                         f"{parsed.statement.version} of {key} on first use")
            log.warning("first statement accepted without memory", extra={"event": "trust.first-use",
                                                                          "version": parsed.statement.version})
        self.accepted = (parsed.statement, parsed.key_id)
        self._server_refusal = None
        return None

    def _read_statement(self, store: Store, server: str) -> bytes | None:
        key = server_signature_key(server)
        try:
            got = store.get(key, if_generation_not_match=self._signed_generation)
        except NotFound:
            self._signed, self._signed_generation = None, None
            return None
        if got is not None:
            self._signed, self._signed_generation = got[0], got[1].generation
        return self._signed

    # -- releases ---------------------------------------------------------------------------

    def check_release(self, app: str, info: ReleaseInfo) -> ReleaseStatement | None:
        """The verified statement of a release about to be installed (None when release checks
        are off); Untrusted, also kept for the report, when it does not verify."""
        if self.release_keys is None:
            return None
        try:
            statement = verify_release(info, self.release_keys)
        except Untrusted as e:
            self.refuse_release(app, info.name, e)
            raise
        self._release_refusals.pop(app, None)
        return statement

    def check_download(self, app: str, statement: ReleaseStatement | None, sha256: str, size: int) -> None:
        """Untrusted unless the downloaded .deb is the signed one (nothing to do when checks are off)."""
        if statement is None:
            return
        try:
            check_release_file(statement, sha256, size)
        except Untrusted as e:
            self.refuse_release(app, statement.release, e)
            raise

    def refuse_release(self, app: str, release: str, e: Untrusted) -> None:
        log.warning("release refused", extra={"event": "trust.refused", "subject": release, "app": app,
                                              "reason": e.reason, "error": str(e)})
        self._release_refusals[app] = Refusal(release, e.reason, str(e), app)

    # -- the report -------------------------------------------------------------------------

    def status(self, failures: Mapping[str, Failure]) -> TrustStatus:
        """The report's trust field. A release refusal shows while its failure stands (a newer
        release chosen, or the app taken off, ends both)."""
        refused = [self._server_refusal] if self._server_refusal is not None else []
        refused += [r for app, r in sorted(self._release_refusals.items())
                    if (f := failures.get(app)) is not None and f.release == r.subject]
        accepted = self.accepted
        return TrustStatus(
            releases="verified" if self.release_keys is not None else "off",
            server_files="verified" if self.deploy_keys is not None else "off",
            version=accepted[0].version if accepted else None,
            keyid=accepted[1] if accepted else None,
            expires=accepted[0].to_json()["expires"] if accepted else None,
            refused=[r.to_json() for r in refused],
            note=self.note)
