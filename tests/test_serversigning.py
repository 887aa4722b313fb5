"""push.serversigning: writers sign what they wrote; re-signers renew only what a key holder signed.

Every statement written here is checked the way pulld checks it (verify_server_file with
the deploy keys' public keys), against a local store.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleetdata import TOKENS, make_config, make_release
from push import fleet, serverfile
from push.errors import Conflict, StoreUnavailable, Untrusted
from push.layout import server_file_key, server_signature_key
from push.server.app import create_app
from push.server.auth import AuthSettings
from push.serversigning import Resigner, sign_written
from push.signing import Keyring, SignedServerFile, SigningKey, sign_server_file, verify_server_file
from push.store import Store
from push.store.local import LocalStore
from waiting import wait_for

SERVER = "web-1"
KEY = SigningKey.generate("deploy")
OLD = SigningKey.generate("deploy-old")
THIEF = SigningKey.generate("thief")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return LocalStore(tmp_path / "bucket")


def write_file(store: Store, entries: list[str]) -> tuple[bytes, str]:
    data = (json.dumps(entries, indent=2) + "\n").encode()
    return data, store.put(server_file_key(SERVER), data, content_type="application/json").generation


def statement(store: Store) -> SignedServerFile:
    got = store.get(server_signature_key(SERVER))
    assert got is not None
    return SignedServerFile.parse(SERVER, got[0])


def verified(store: Store, keys: tuple[SigningKey, ...] = (KEY,)) -> SignedServerFile:
    """The statement as an agent trusting `keys` accepts it (Untrusted otherwise)."""
    data = store.get(server_file_key(SERVER))[0]  # type: ignore[index]
    signed = store.get(server_signature_key(SERVER))[0]  # type: ignore[index]
    return verify_server_file(SERVER, data, signed, Keyring([k.public for k in keys]))


def put_statement(store: Store, data: bytes, key: SigningKey, *, now: datetime, version: int | None = None) -> None:
    signed = sign_server_file(SERVER, data, key, None, now=now)
    if version is not None:
        st = signed.statement
        st = type(st)(server=st.server, sha256=st.sha256, version=version, issued=st.issued, expires=st.expires)
        signed = SignedServerFile(st, key.sign(st.encode()), key.key_id)
    store.put(server_signature_key(SERVER), signed.to_bytes())


def test_a_writer_signs_what_it_wrote_and_only_while_it_is_current(store: Store) -> None:
    data, gen = write_file(store, ["hello/a"])
    first = sign_written(store, SERVER, data, gen, KEY)
    assert first is not None and verified(store).statement == first.statement
    data2, gen2 = write_file(store, ["hello/b"])
    assert sign_written(store, SERVER, data, gen, KEY) is None  # moved on: its writer signs it
    second = sign_written(store, SERVER, data2, gen2, KEY)
    assert second is not None and second.statement.version > first.statement.version
    assert verified(store).statement.sha256 == hashlib.sha256(data2).hexdigest()


def test_a_writer_that_loses_the_statement_race_looks_again(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    data, gen = write_file(store, ["hello/a"])
    real_put = store.put
    raced = []

    def put(key: str, *args: object, **kwargs: object) -> object:
        if key == server_signature_key(SERVER) and not raced:  # another writer signs first
            raced.append(real_put(key, b"{}"))
        return real_put(key, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "put", put)
    assert sign_written(store, SERVER, data, gen, KEY) is not None and raced
    verified(store)


def test_the_fleet_write_path_signs_every_change(store: Store, tmp_path: Path) -> None:
    rels = [make_release(store, "hello", n) for n in (1, 2)]
    ctx = fleet.Context.open(store, make_config(tmp_path), deploy_key=KEY)
    fleet.deploy(ctx, "a", SERVER, "hello", rels[0].name)
    v1 = verified(store).statement.version
    fleet.deploy(ctx, "a", SERVER, "hello", rels[1].name)
    fleet.rollback(ctx, "a", SERVER, "hello")
    assert verified(store).statement.version > v1
    fleet.remove(ctx, "a", SERVER, "hello")
    assert verified(store).statement.sha256 == hashlib.sha256(store.get(server_file_key(SERVER))[0]).hexdigest()  # type: ignore[index]


def test_a_change_whose_statement_cannot_be_written_says_so(store: Store, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    rel = make_release(store, "hello", 1)
    ctx = fleet.Context.open(store, make_config(tmp_path), deploy_key=KEY)

    def refuse(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("bucket says no")

    monkeypatch.setattr("push.serversigning._store_statement", refuse)
    with pytest.raises(StoreUnavailable, match=r"the change was made, but its statement could not be written.*"
                                               r"`push resign web-1`"):
        fleet.deploy(ctx, "a", SERVER, "hello", rel.name)
    assert serverfile.read(store, SERVER).release_of("hello") is not None  # type: ignore[union-attr]
    assert ctx.history.last_change(SERVER, "hello") is not None  # recorded: it happened


def test_resigner_renews_at_half_life_and_moves_to_a_new_key(store: Store) -> None:
    now = datetime.now(UTC)
    data, gen = write_file(store, ["hello/a"])
    sign_written(store, SERVER, data, gen, KEY, now=now)
    resigner = Resigner(store, KEY)
    assert resigner.resign(SERVER, now=now).action == "current"
    later = now + timedelta(hours=13)
    renewed = resigner.resign(SERVER, now=later)
    assert renewed.action == "signed" and statement(store).statement.issued == later.replace(microsecond=0)
    # Rotation: statements by the old key (trusted by the re-signer) move to the new one.
    put_statement(store, data, OLD, now=now, version=renewed.version + 1)  # type: ignore[operator]
    rotated = Resigner(store, KEY, Keyring([OLD.public])).resign(SERVER, now=now)
    assert rotated.action == "signed" and verified(store).key_id == KEY.key_id


@pytest.mark.parametrize("attack", ["edited", "put-back", "unknown-key", "expired", "unsigned"])
def test_resigner_never_signs_what_no_key_holder_wrote(store: Store, attack: str) -> None:
    now = datetime.now(UTC)
    data, gen = write_file(store, ["hello/a"])
    first = sign_written(store, SERVER, data, gen, KEY, now=now - timedelta(hours=13))
    assert first is not None
    resigner = Resigner(store, KEY)
    if attack == "edited":
        write_file(store, ["hello/evil"])
    elif attack == "put-back":
        old = statement(store).to_bytes()
        resigner.resign(SERVER, now=now)  # renewed: the re-signer has seen the newer version
        store.put(server_signature_key(SERVER), old)
    elif attack == "unknown-key":
        put_statement(store, data, THIEF, now=now - timedelta(hours=13))
    elif attack == "expired":
        put_statement(store, data, KEY, now=now - timedelta(days=2))
    else:
        store.delete(server_signature_key(SERVER))
    before = store.get(server_signature_key(SERVER)) if attack != "unsigned" else None
    outcome = resigner.resign(SERVER, now=now)
    assert outcome.action == "refused", outcome
    after = store.get(server_signature_key(SERVER)) if attack != "unsigned" else None
    assert (before and before[0]) == (after and after[0])  # nothing written
    # The operator who checked the file adopts it explicitly.
    assert resigner.resign(SERVER, adopt=True, now=now).action == "signed"
    verified(store)


def test_resign_all_reads_only_what_changed(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime.now(UTC)
    data, gen = write_file(store, ["hello/a"])
    sign_written(store, SERVER, data, gen, KEY, now=now)
    resigner = Resigner(store, KEY)
    assert [o.action for o in resigner.resign_all([SERVER, "web-2"], now=now)] == ["current", "no-file"]
    assert resigner.resign_all([SERVER, "web-2"], now=now) == []  # nothing changed, nothing due: no reads
    assert [o.action for o in resigner.resign_all([SERVER], now=now + timedelta(hours=13))] == ["signed"]
    assert [o.action for o in resigner.resign_all([SERVER], now=now + timedelta(hours=13))] == ["current"]


def test_a_race_lost_too_often_is_a_conflict(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    data, gen = write_file(store, ["hello/a"])

    def always_raced(*args: object, **kwargs: object) -> None:
        raise Conflict("someone else signed")

    monkeypatch.setattr("push.serversigning._store_statement", always_raced)
    with pytest.raises(Conflict, match="kept changing"):
        sign_written(store, SERVER, data, gen, KEY)


def test_push_server_signs_deploys_and_renews_statements(store: Store, tmp_path: Path) -> None:
    """create_app with a deploy key: an API deploy is signed; a statement past half-life is
    renewed by the server's own loop."""
    rel = make_release(store, "hello", 1)
    data, gen = write_file(store, [])
    sign_written(store, SERVER, data, gen, KEY, now=datetime.now(UTC) - timedelta(hours=13))
    old_version = statement(store).statement.version
    app = create_app(store, make_config(tmp_path), auth=AuthSettings(), poll_interval=0.05, catalog_interval=0.1,
                     deploy_key=KEY, resign_interval=0.05)
    with TestClient(app) as client:
        wait_for(lambda: statement(store).statement.version > old_version, 10, "the statement to be renewed")
        r = client.post(f"/api/v1/servers/{SERVER}/apps/hello/deploy", json={"release": rel.name},
                        headers={"Authorization": f"Bearer {TOKENS['ci']}"})
        assert r.status_code == 200, r.text
    st = verified(store)
    assert st.statement.sha256 == hashlib.sha256(store.get(server_file_key(SERVER))[0]).hexdigest()  # type: ignore[index]
    with pytest.raises(Untrusted):
        verified(store, keys=(OLD,))
