"""pulld with trusted keys (issue 15): real dpkg into a sandbox root, real units, a local store.

One agent walks through the attacks of docs/trust.md one after the other: each is refused
with the release that ran before left running and the reason in the report. Then the
revoked key, and the agent's memory of versions (trust.json) torn or missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agentpkgs import build_deb, make_release, set_server_file
from push import status
from push.agent.agent import Agent, AgentOptions
from push.agent.backoff import Backoff
from push.agent.dpkg import Dpkg
from push.agent.supervisor import SandboxSupervisor
from push.agent.trust import TRUST_FILE, TrustOptions
from push.catalog import publish
from push.errors import NotFound
from push.layout import server_signature_key
from push.release import ReleaseInfo
from push.signing import ServerFileStatement, SignedServerFile, SigningKey, sign_server_file, write_key_pair
from push.store import Store
from push.store.local import LocalStore
from waiting import wait_for

SERVER = "s1"


@dataclasses.dataclass
class Keys:
    release: SigningKey
    deploy: SigningKey
    deploy2: SigningKey
    other: SigningKey      # nobody trusts it: the attacker's
    files: dict[str, Path]


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    made = {name: write_key_pair(tmp_path / "keys", name) for name in ("release", "deploy", "deploy2", "other")}
    return Keys(*(made[n][0] for n in ("release", "deploy", "deploy2", "other")),
                files={n: pub for n, (_, _, pub) in made.items()})


class Fleet:
    """A bucket, one sandbox root, and whoever writes to the bucket (signing or not)."""

    def __init__(self, tmp_path: Path, keys: Keys) -> None:
        self.tmp = tmp_path
        self.keys = keys
        self.store: Store = LocalStore(tmp_path / "store")
        self.root = tmp_path / "root"
        self.supervisor = SandboxSupervisor(self.root, stop_timeout=3)
        self.agent = self.new_agent(TrustOptions(release_keys=(keys.files["release"],),
                                                 deploy_keys=(keys.files["deploy"],)))

    def new_agent(self, trust: TrustOptions) -> Agent:
        """An agent (a restarted pulld) on the same root and state directory."""
        options = AgentOptions(server=SERVER, root=self.root, backoff=Backoff(base=60.0), trust=trust)
        self.agent = Agent(self.store, options, self.supervisor)  # type: ignore[arg-type]
        return self.agent

    def deploy(self, entries: list[str], key: SigningKey | None = None, *, server: str = SERVER,
               now: datetime | None = None, lifetime: timedelta = timedelta(days=1),
               version: int | None = None) -> tuple[bytes, bytes]:
        """Write the server file and its statement (signed by `key`, the deploy key by default,
        as the writers do; with `version`, at that version, as a thief could)."""
        set_server_file(self.store, SERVER, entries)
        data = self.store.get(f"server/{SERVER}.json")[0]  # type: ignore[index]
        key = key or self.keys.deploy
        if version is None:
            previous = self.statement()
            signed = sign_server_file(server, data, key, previous.statement if previous else None, now=now,
                                      lifetime=lifetime)
        else:
            issued = now or datetime.now(UTC)
            statement = ServerFileStatement(server=server, sha256=hashlib.sha256(data).hexdigest(), version=version,
                                            issued=issued, expires=issued + lifetime)
            signed = SignedServerFile(statement, key.sign(statement.encode()), key.key_id)
        self.store.put(server_signature_key(SERVER), signed.to_bytes())
        return data, signed.to_bytes()

    def statement(self) -> SignedServerFile | None:
        try:
            got = self.store.get(server_signature_key(SERVER))
        except NotFound:
            return None
        return SignedServerFile.parse(SERVER, got[0]) if got else None

    def step(self) -> bool:
        return self.agent.step(["start"])

    def report(self) -> status.AgentStatus:
        r = status.read(self.store, SERVER)
        assert r is not None
        return r

    def installed(self) -> dict[str, str]:
        return {p.package: p.version for p in Dpkg(self.root).installed().values() if p.ok}

    def running(self, app: str, version: str) -> bool:
        """Whether `version` of `app` runs (waiting for a restarted unit to say so)."""
        path = self.root / f"run/{app}/running"
        return wait_for(lambda: path.exists() and path.read_text().split()[:1] == [version], 10,
                        f"{app} {version} to run")

    def assert_refused(self, reason: str, running: str, *, app: str | None = None) -> status.TrustStatus:
        """The step did not converge, the old release runs, and the report says why."""
        assert self.step() is False
        assert self.installed()["push-hello"] == running
        assert self.running("hello", running)
        rep = self.report()
        assert rep.trust is not None and not rep.in_sync
        assert [(r["reason"], r.get("app")) for r in rep.trust.refused] == [(reason, app)], rep.trust.refused
        if app is None:
            assert rep.error is not None and rep.error.startswith(f"untrusted ({reason}): ")
        else:
            assert rep.apps[app].state == "failed"
            assert rep.apps[app].error is not None and rep.apps[app].error.startswith(f"untrusted ({reason}): ")
        return rep.trust


@pytest.fixture
def fleet(tmp_path: Path, keys: Keys) -> Iterator[Fleet]:
    f = Fleet(tmp_path, keys)
    yield f
    f.supervisor.close(stop_units=True)


def test_signed_releases_install_and_every_attack_is_refused(fleet: Fleet, keys: Keys, tmp_path: Path) -> None:
    """TUF's attacks, one after the other, on one agent: each leaves what runs running."""
    signed = {n: make_release(fleet.store, tmp_path, "hello", n, signing_key=keys.release) for n in (1, 3, 4)}

    # A signed release, chosen by a signed server file: installed; the report says what it verified.
    first_file, first_statement = fleet.deploy([signed[1].name])
    assert fleet.step() is True
    assert fleet.running("hello", "1.1")
    trust = fleet.report().trust
    assert trust is not None and trust.mode == "verified" and trust.refused == []
    assert trust.keyid == keys.deploy.key_id and trust.version and trust.expires
    assert json.loads((fleet.agent.state_dir / TRUST_FILE).read_text()) == {
        "seen": {SERVER: {"version": trust.version, "keyid": keys.deploy.key_id}}}

    # Arbitrary installation: an unsigned release, even chosen by a signed file.
    unsigned = make_release(fleet.store, tmp_path, "hello", 2)
    fleet.deploy([unsigned.name])
    fleet.assert_refused("unsigned", "1.1", app="hello")

    # A release re-uploaded by someone without the key: another .deb, its sha256 and size,
    # the old signature kept (a signature by the attacker's key fails as unknown-key).
    original = signed[3]
    fleet.store.delete(original.release.key)
    evil = build_deb(tmp_path, "hello", "1.3", postinst_extra="echo pwned > $DPKG_ROOT/pwned")
    forged = ReleaseInfo.from_metadata(original.release.key, {
        **original.to_metadata(), "sha256": _sha256(evil), "size": str(evil.stat().st_size)})
    publish(fleet.store, forged, evil)
    fleet.deploy([original.name])
    fleet.assert_refused("bad-signature", "1.1", app="hello")
    assert not (fleet.root / "pwned").exists()

    # A server file edited straight in the bucket (naming a validly signed release).
    fleet.deploy([signed[1].name])
    assert fleet.step() is True
    set_server_file(fleet.store, SERVER, [signed[4].name])
    fleet.assert_refused("digest-mismatch", "1.1")

    # Rollback: a newer choice is followed; then the old, validly signed file is put back.
    fleet.deploy([signed[4].name])
    assert fleet.step() is True
    assert fleet.running("hello", "1.4")
    fleet.store.put(f"server/{SERVER}.json", first_file)
    fleet.store.put(server_signature_key(SERVER), first_statement)
    fleet.assert_refused("rollback", "1.4")

    # Freeze: a statement nobody re-signed (signed two days ago, for a day).
    fleet.deploy([signed[4].name], now=datetime.now(UTC) - timedelta(days=2), version=_now_ms())
    trust = fleet.assert_refused("expired", "1.4")
    assert "expired at" in trust.refused[0]["message"]

    # Mix-and-match: a valid statement of these very bytes, for another server.
    fleet.deploy([signed[4].name], server="s2")
    fleet.assert_refused("wrong-server", "1.4")

    # Signed with a key nobody trusts.
    fleet.deploy([signed[4].name], keys.other)
    fleet.assert_refused("unknown-key", "1.4")

    # Back to a valid statement: followed again, nothing refused any more.
    fleet.deploy([signed[1].name])
    assert fleet.step() is True
    assert fleet.running("hello", "1.1") and fleet.report().trust.refused == []  # type: ignore[union-attr]


def test_revoked_keys_and_the_agents_memory(fleet: Fleet, keys: Keys, tmp_path: Path) -> None:
    h1 = make_release(fleet.store, tmp_path, "hello", 1, signing_key=keys.release)
    h2 = make_release(fleet.store, tmp_path, "hello", 2, signing_key=keys.release)
    fleet.deploy([h1.name])
    assert fleet.step() is True
    memory = fleet.agent.state_dir / TRUST_FILE
    before = json.loads(memory.read_text())["seen"][SERVER]["version"]

    # A torn memory is never taken for an empty one: every server file is refused.
    memory.write_text('{"seen": {"s1": {"vers')
    fleet.new_agent(fleet.agent.options.trust)
    fleet.deploy([h2.name])
    fleet.assert_refused("state-unreadable", "1.1")

    # Removed (the deliberate reset): the first valid statement is accepted, and the report says so.
    memory.unlink()
    fleet.new_agent(fleet.agent.options.trust)
    assert fleet.step() is True
    assert fleet.running("hello", "1.2")
    note = fleet.report().trust.note  # type: ignore[union-attr]
    assert note is not None and "on first use" in note
    assert json.loads(memory.read_text())["seen"][SERVER]["version"] > before

    # A thief with the deploy key signs a version far ahead (fast-forward): accepted, for now.
    far = _now_ms() + 10**12
    fleet.deploy([h2.name], version=far)
    assert fleet.step() is True

    # The deploy key is revoked and a new one trusted: the new key's statements are followed
    # although their versions are lower (the thief's version is forgotten with the key)...
    revoking = TrustOptions(release_keys=(keys.files["release"],),
                            deploy_keys=(keys.files["deploy"], keys.files["deploy2"]), revoked=(keys.deploy.key_id,))
    fleet.new_agent(revoking)
    fleet.deploy([h1.name], keys.deploy2, version=far - 10**12)
    assert fleet.step() is True
    assert fleet.running("hello", "1.1")
    # ...and whatever the revoked key signs is refused.
    fleet.deploy([h2.name], keys.deploy)
    fleet.assert_refused("revoked-key", "1.1")

    # A release signed by a revoked release key is refused too.
    fleet.new_agent(dataclasses.replace(revoking, revoked=(keys.deploy.key_id, keys.release.key_id)))
    fleet.deploy([h2.name], keys.deploy2)
    fleet.assert_refused("revoked-key", "1.1", app="hello")


def test_without_keys_nothing_is_verified_and_the_report_says_so(fleet: Fleet, tmp_path: Path) -> None:
    fleet.new_agent(TrustOptions())
    h1 = make_release(fleet.store, tmp_path, "hello", 1)
    set_server_file(fleet.store, SERVER, [h1.name])
    assert fleet.step() is True
    trust = fleet.report().trust
    assert trust is not None and (trust.releases, trust.server_files, trust.mode) == ("off", "off", "off")
    assert not (fleet.agent.state_dir / TRUST_FILE).exists()


def test_release_keys_only_checks_releases(fleet: Fleet, keys: Keys, tmp_path: Path) -> None:
    fleet.new_agent(TrustOptions(release_keys=(keys.files["release"],)))
    h1 = make_release(fleet.store, tmp_path, "hello", 1, signing_key=keys.other)
    set_server_file(fleet.store, SERVER, [h1.name])  # no statement: server files are not checked
    assert fleet.step() is False
    rep = fleet.report()
    assert rep.trust is not None and rep.trust.mode == "releases only"
    assert rep.trust.refused[0]["reason"] == "unknown-key" and rep.apps["hello"].installed is None


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
