"""Signing server files in the bucket: the writers' side of push.signing's server-file statements.

Every writer of `server/{name}.json` that holds a deploy key (the push server, the fleet
CLI straight to the bucket, `push resign`) stores a statement at
`signatures/server/{name}.json`, compare-and-swap on the generation of the statement it
read. Two operations, with different rules about *what* may be signed:

- `sign_written`: right after a writer's own compare-and-swap write, sign exactly the
  bytes it wrote, and only while the file is still at the generation it wrote (a later
  writer signs its own file). A writer never signs bytes it did not write.
- `Resigner`: renew statements before they expire (at half-life, `needs_signing`) and move
  them to a new key (rotation), but only a statement that verifies with a key the
  re-signer trusts (its own, or `--trust-deploy-key`), that names the file's current
  bytes, that has not expired, and whose version is not below one it has seen. So a file
  edited straight in the bucket, or an old one put back, is never signed by a re-signer.
  `adopt` is the explicit exception: sign the current contents whatever their statement
  (the first signing of a fleet, or an expired statement after an outage), for an
  operator who has looked at them.

Used by push.fleet (the write path), the push server's poll, and `push resign`. Design:
docs/trust.md.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from push import layout
from push.errors import Conflict, NotFound, Untrusted
from push.layout import server_file_key, server_signature_key
from push.signing import Keyring, SignedServerFile, SigningKey, needs_signing, sign_server_file
from push.store import Store

log = logging.getLogger(__name__)

ATTEMPTS = 5


def _read_statement(store: Store, server: str) -> tuple[SignedServerFile | None, str | None]:
    """(the stored statement, parsed but not verified, or None if absent or unreadable; its generation)."""
    try:
        got = store.get(server_signature_key(server))
    except NotFound:
        return None, None
    assert got is not None
    data, info = got
    try:
        return SignedServerFile.parse(server, data), info.generation
    except Untrusted:  # malformed: replaced by whoever signs next
        return None, info.generation


def _store_statement(store: Store, server: str, signed: SignedServerFile, generation: str | None) -> None:
    """Write the statement compare-and-swap on `generation` (None: only if there is none); Conflict otherwise."""
    if generation is None:
        store.put(server_signature_key(server), signed.to_bytes(), if_absent=True, content_type="application/json")
    else:
        store.put(server_signature_key(server), signed.to_bytes(), if_generation_match=generation,
                  content_type="application/json")


def _file_generation(store: Store, server: str) -> str | None:
    try:
        return store.stat(server_file_key(server)).generation
    except NotFound:
        return None


def sign_written(store: Store, server: str, data: bytes, generation: str, key: SigningKey,
                 now: datetime | None = None) -> SignedServerFile | None:
    """Sign `data`, which this writer just wrote to server/{server}.json at `generation`.

    Returns the statement stored, or None when the file has moved on meanwhile (its writer
    signs it). Store errors propagate; Conflict after ATTEMPTS races lost.
    """
    for _ in range(ATTEMPTS):
        current, sig_generation = _read_statement(store, server)
        if _file_generation(store, server) != generation:
            return None
        signed = sign_server_file(server, data, key, current.statement if current else None, now)
        try:
            _store_statement(store, server, signed, sig_generation)
        except Conflict:  # another writer signed meanwhile: look again
            continue
        log.info("server file signed", extra={"event": "sign", "server": server,
                                              "version": signed.statement.version})
        return signed
    raise Conflict(f"{server_signature_key(server)} kept changing: the statement of {server_file_key(server)} "
                   f"was not written after {ATTEMPTS} attempts")


@dataclass(frozen=True)
class Outcome:
    """What a re-signer did with one server: signed, current (nothing to do), or refused (why)."""

    server: str
    action: str                # signed | current | refused | no-file
    why: str = ""
    version: int | None = None
    due: datetime | None = None    # when the statement now stored needs signing again (current)


class Resigner:
    """Renews the statements of a set of servers, remembering the highest version it has seen
    of each (so an old statement put back is not renewed while it runs)."""

    def __init__(self, store: Store, key: SigningKey, keyring: Keyring | None = None) -> None:
        self.store = store
        self.key = key
        # Whose statements may be renewed: ours, and the keys we are told to trust (an old key, during rotation).
        self.keyring = keyring if keyring is not None else Keyring([key.public])
        if key.key_id not in self.keyring.keys:
            self.keyring = Keyring([*self.keyring.keys.values(), key.public], self.keyring.revoked)
        self.seen: dict[str, int] = {}
        self._refused: dict[str, str] = {}   # server -> why, to log each refusal once
        # server -> ((file generation, statement generation), when to look again even if neither changes)
        self._judged: dict[str, tuple[tuple[str | None, str | None], datetime | None]] = {}

    def resign(self, server: str, *, adopt: bool = False, now: datetime | None = None) -> Outcome:
        """Sign server/{server}.json again if it needs it and may be (see the module docstring)."""
        now = now or datetime.now(UTC)
        for _ in range(ATTEMPTS):
            current, sig_generation = _read_statement(self.store, server)
            try:
                got = self.store.get(server_file_key(server))
            except NotFound:
                return Outcome(server, "no-file", "no server file")
            assert got is not None
            data, info = got
            if not adopt:
                why = self._why_not(server, current, data, now)
                if why is not None:
                    if self._refused.get(server) != why:
                        log.warning("not re-signing", extra={"event": "sign.refused", "server": server, "why": why})
                        self._refused[server] = why
                    return Outcome(server, "refused", why)
            self._refused.pop(server, None)
            if current is not None:
                self.seen[server] = max(self.seen.get(server, 0), current.statement.version)
            if not adopt and not needs_signing(current, data, self.key, now):
                assert current is not None
                return Outcome(server, "current", version=current.statement.version, due=current.statement.resign_at)
            signed = sign_server_file(server, data, self.key, current.statement if current else None, now)
            if _file_generation(self.store, server) != info.generation:
                continue  # changed while we looked: judge the new one
            try:
                _store_statement(self.store, server, signed, sig_generation)
            except Conflict:
                continue
            self.seen[server] = signed.statement.version
            log.info("server file re-signed", extra={"event": "sign", "server": server, "adopt": adopt,
                                                     "version": signed.statement.version})
            return Outcome(server, "signed", "adopted its current contents" if adopt else "", signed.statement.version)
        raise Conflict(f"{server_file_key(server)} or its statement kept changing: not re-signed after "
                       f"{ATTEMPTS} attempts")

    def _why_not(self, server: str, current: SignedServerFile | None, data: bytes, now: datetime) -> str | None:
        """Why the current statement must not be renewed (None: it may)."""
        what = server_file_key(server)
        if current is None:
            return (f"{what} has no valid statement: only its writer, or `push resign --adopt {server}` after "
                    "checking it, signs it")
        st = current.statement
        try:
            self.keyring.check(st.encode(), current.signature, current.key_id, f"the statement of {what}")
        except Untrusted as e:
            return str(e)
        if st.server != server:
            return f"the statement of {what} is for server {st.server!r}"
        if st.sha256 != hashlib.sha256(data).hexdigest():
            return (f"{what} was changed without a new statement (edited straight in the bucket?): not signing "
                    f"what no key holder wrote; `push resign --adopt {server}` after checking it")
        if st.version < self.seen.get(server, 0):
            return f"{what} is version {st.version}, older than version {self.seen[server]} seen: an old file put back"
        if now >= st.expires:
            return f"the statement of {what} has expired: `push resign --adopt {server}` after checking it"
        return None

    def resign_all(self, servers: Iterable[str], now: datetime | None = None) -> list[Outcome]:
        """Re-sign what needs it among `servers`, reading only what changed since the last call.

        Two listings (server/ and signatures/server/) tell which files or statements changed;
        the others are looked at again only when their statement reaches half-life. Outcomes
        of the servers looked at."""
        now = now or datetime.now(UTC)
        files = {i.key: i.generation for i in self.store.list(layout.SERVER)}
        statements = {i.key: i.generation for i in self.store.list(layout.SERVER_SIGNATURES)}
        out = []
        for server in servers:
            generations = (files.get(server_file_key(server)), statements.get(server_signature_key(server)))
            judged = self._judged.get(server)
            if judged is not None and judged[0] == generations and (judged[1] is None or now < judged[1]):
                continue
            outcome = self.resign(server, now=now)
            out.append(outcome)
            if outcome.action == "signed":
                self._judged.pop(server, None)  # its statement's generation changed: judged afresh next time
            else:
                self._judged[server] = (generations, outcome.due)
        return out
