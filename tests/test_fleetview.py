"""push.fleetview: snapshots of the fleet from the bucket, built one at a time and swapped whole."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from fleetdata import make_config, make_release, report
from push import fleet, serverfile, unitrequests
from push.errors import StoreUnavailable
from push.fleetstate import FleetState
from push.fleetview import FleetView


def apps_of(view: FleetView, server: str) -> dict[str, object]:
    state = view.snapshot.state(server)
    assert state is not None
    return {a.app: a for a in state.apps}


def test_fleet_state_marks(ctx, bucket, rels):
    dirty = make_release(bucket, "pulld", 1, dirty=True)
    make_release(bucket, "pulld", 2)
    fleet.deploy(ctx, "a", "web-1", "hello", rels[3].name)
    fleet.deploy(ctx, "a", "web-1", "pulld", dirty.name)
    fleet.deploy(ctx, "a", "web-2", "hello", rels[1].name)
    report(bucket, "web-1", {"hello": rels[3].name, "pulld": dirty.name})
    report(bucket, "web-2", {"hello": rels[0].name}, failed={"hello": "dpkg: error processing package"},
           age=timedelta(hours=2))
    serverfile.write(bucket, serverfile.read(bucket, "db-1").with_release(rels[0].release))  # not allowed there
    view = FleetView(ctx)
    state = view.state()
    servers = {s.server: s for s in state.servers}
    assert list(servers) == ["web-1", "web-2", "db-1"] and state.count == 3
    w1 = {a.app: a for a in servers["web-1"].apps}
    assert w1["hello"].marks == [] and w1["hello"].actual == rels[3].name
    assert set(w1["pulld"].marks) == {"out_of_date", "dirty"}
    assert servers["web-1"].stale is False and servers["web-1"].problems == 0
    w2 = {a.app: a for a in servers["web-2"].apps}
    assert set(w2["hello"].marks) == {"out_of_date", "drift", "failed"}
    assert w2["hello"].error == "dpkg: error processing package"
    assert servers["web-2"].stale is True
    d1 = {a.app: a for a in servers["db-1"].apps}
    assert "not_allowed" in d1["hello"].marks and "no_report" in d1["pulld"].marks
    # Filters: substrings of server and app names.
    assert [s.server for s in view.state(server="web").servers] == ["web-1", "web-2"]
    assert [[a.app for a in s.apps] for s in view.state(app="pull").servers] == [["pulld"]] * 3


def test_fleet_json_is_the_models_own(ctx, bucket, rels):
    """GET /api/v1/fleet joins each server's cached JSON text: it must be FleetState's JSON."""
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    report(bucket, "web-2", {"hello": rels[1].name})
    view = FleetView(ctx)
    for server, app in [(None, None), ("web", None), (None, "pull"), ("db", "hello"), ("nothing", None)]:
        parsed = FleetState.from_bytes(view.state_json(server, app))
        expected = view.state(server, app)
        assert parsed.model_copy(update={"generated": ""}) == expected.model_copy(update={"generated": ""})


def test_refresh_reads_only_what_changed(ctx, bucket, rels):
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    fleet.deploy(ctx, "a", "web-2", "hello", rels[0].name)
    view = FleetView(ctx)
    view.refresh()
    reads = view.object_reads
    rev1, rev2 = view.rev("web-1"), view.rev("web-2")
    assert view.refresh() == set() and view.object_reads == reads
    fleet.deploy(ctx, "a", "web-1", "hello", rels[1].name)
    assert view.refresh() == {"web-1"} and view.object_reads == reads + 1
    assert view.rev("web-1") != rev1 and view.rev("web-2") == rev2
    # A unit request changes the rev too; its outcome being written back does not.
    fleet.unit_action(ctx, "a", "web-2", "hello.service", "restart")
    assert view.refresh() == {"web-2"}
    req = unitrequests.pending(bucket, "web-2")[0]
    unitrequests.complete(bucket, req, "done", "ok", "web-2")
    assert view.refresh() == set()


def test_unchanged_servers_keep_their_state_and_json(ctx, bucket, rels):
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    fleet.deploy(ctx, "a", "web-2", "hello", rels[0].name)
    view = FleetView(ctx)
    before = view.snapshot
    assert view.refresh() == set() and view.snapshot is before  # nothing changed: the same snapshot
    fleet.deploy(ctx, "a", "web-1", "hello", rels[1].name)
    view.refresh()
    after = view.snapshot
    assert after is not before
    assert after.servers["web-2"] is before.servers["web-2"]  # its state, JSON text and fragments
    assert after.servers["web-1"] is not before.servers["web-1"]
    # A snapshot never changes once built: the old one still shows what it saw.
    assert before.state("web-1").apps[0].desired == rels[0].name
    assert after.state("web-1").apps[0].desired == rels[1].name


def test_same_rev_on_every_push_server(ctx, rels):
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    a, b = FleetView(ctx), FleetView(ctx)
    a.refresh()
    b.refresh()
    assert a.rev("web-1") == b.rev("web-1") and a.rev("nowhere") == b.rev("nowhere")


def test_release_picker_lists_servers(ctx, bucket, rels):
    fleet.deploy(ctx, "a", "web-1", "hello", rels[2].name)
    report(bucket, "web-2", {"hello": rels[2].name})
    view = FleetView(ctx)
    got = view.releases("hello")
    assert [r.name for r in got] == [r.name for r in reversed(rels)]
    row = got[1]
    assert row.desired_on == ["web-1"] and row.running_on == ["web-2"]
    assert row.short_hash == rels[2].release.short_hash


def test_apps(ctx, bucket, rels):
    make_release(bucket, "other", 1)
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    apps = {a.app: a for a in FleetView(ctx).apps()}
    assert list(apps) == ["hello", "other", "pulld"]
    assert (apps["hello"].releases, apps["hello"].latest, apps["hello"].servers) == (4, rels[3].name,
                                                                                     ["web-1", "web-2"])
    assert (apps["pulld"].releases, apps["pulld"].latest) == (0, None)
    assert apps["other"].servers == []


def test_deploy_rollback_and_view_on_every_store(store, tmp_path):
    ctx = fleet.Context.open(store, make_config(tmp_path), via="test")
    rels = [make_release(store, "hello", n) for n in range(1, 4)]
    fleet.deploy(ctx, "a", "web-1", "hello", rels[2].name, expected_from=None)
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name, expected_from=rels[2].name)
    with pytest.raises(fleet.ChangedMeanwhile):
        fleet.deploy(ctx, "b", "web-1", "hello", rels[1].name, expected_from=rels[2].name)
    assert fleet.rollback(ctx, "a", "web-1", "hello").to == rels[2].name
    view = FleetView(fleet.Context.open(store, ctx.config))
    assert view.refresh() == {"web-1"}
    w1 = view.state(server="web-1").servers[0].apps[0]
    assert w1.desired == rels[2].name and w1.marks == ["no_report"]


def test_a_local_write_is_seen_by_the_next_read(ctx, rels):
    """refresh_server (the push server's trigger after its own writes) makes the next
    snapshot show the write, without waiting for a poll."""
    view = FleetView(ctx)
    view.refresh()
    before = view.snapshot
    rev = view.rev("web-1")
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    assert view.refresh_server("web-1") == {"web-1"} and view.rev("web-1") != rev
    assert apps_of(view, "web-1")["hello"].desired == rels[0].name
    # Only that server was looked at and re-checked: the others are carried over as they were.
    assert view.snapshot.servers["web-2"] is before.servers["web-2"] and view.object_reads == 1
    fleet.unit_action(ctx, "a", "web-1", "hello.service", "stop")
    rev = view.rev("web-1")
    assert view.refresh_server("web-1") == {"web-1"} and view.rev("web-1") != rev
    assert view.refresh_server("web-1") == set()


def test_a_poll_that_started_before_a_local_write_never_goes_back(ctx, bucket, rels, monkeypatch):
    """A bucket poll lists the server files, then reads reports; meanwhile this process
    deploys and re-reads that server. The poll's older look must not win."""
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    view = FleetView(ctx)
    view.refresh()
    report(bucket, "web-1", {"hello": rels[0].name})  # so the poll reads a report after listing the files
    in_poll, release_poll = threading.Event(), threading.Event()
    real_get = bucket.get

    def slow_get(key, *a, **k):
        if key.startswith("status/") and threading.current_thread().name == "poll":
            in_poll.set()
            assert release_poll.wait(10)
        return real_get(key, *a, **k)

    monkeypatch.setattr(bucket, "get", slow_get)
    # The journal's pruning follows the full look outside the builder's lock; under load it
    # let the writer finish first, so "order" said nothing about the builders' turns.
    monkeypatch.setattr("push.fleetview.changes.prune", lambda store: None)
    order = []
    poll = threading.Thread(target=lambda: (view.refresh(include_catalog=False, full=True), order.append("poll")),
                            name="poll")
    poll.start()
    assert in_poll.wait(10)  # the poll has listed web-1's file at rels[0]
    fleet.deploy(ctx, "a", "web-1", "hello", rels[1].name)
    writer = threading.Thread(target=lambda: (view.refresh_server("web-1"), order.append("write")))
    writer.start()
    writer.join(0.2)
    assert writer.is_alive()  # it waits for the poll: one builder at a time
    release_poll.set()
    poll.join(10)
    writer.join(10)
    assert order == ["poll", "write"]
    assert apps_of(view, "web-1")["hello"].desired == rels[1].name
    assert apps_of(view, "web-1")["hello"].actual == rels[0].name  # and the poll's report is kept


def test_new_release_marks_servers_out_of_date(ctx, bucket, rels):
    fleet.deploy(ctx, "a", "web-1", "hello", rels[-1].name)
    view = FleetView(ctx)
    assert apps_of(view, "web-1")["hello"].marks == ["no_report"]
    newer = make_release(bucket, "hello", 9)
    assert view.refresh_catalog() is True
    hello = apps_of(view, "web-1")["hello"]
    assert hello.latest == newer.name and "out_of_date" in hello.marks
    assert view.releases("hello")[0].name == newer.name
    assert view.refresh_catalog() is False


def test_a_bucket_that_cannot_be_listed_keeps_the_last_snapshot(ctx, bucket, rels, monkeypatch):
    fleet.deploy(ctx, "a", "web-1", "hello", rels[0].name)
    view = FleetView(ctx)
    view.refresh()

    def down(*a, **k):
        raise StoreUnavailable("bucket unreachable")

    monkeypatch.setattr(bucket, "list_page", down)
    with pytest.raises(StoreUnavailable):
        view.refresh(include_catalog=False)
    assert apps_of(view, "web-1")["hello"].desired == rels[0].name


def test_a_bad_server_file_is_shown_not_fatal(ctx, bucket, rels):
    bucket.put("server/web-2.json", b"{not json")
    view = FleetView(ctx)
    web2 = view.snapshot.state("web-2")
    assert web2 is not None and "not valid JSON" in web2.file_error and web2.problems >= 1
    rev = view.rev("web-2")
    fleet_ctx = fleet.Context.open(bucket, ctx.config)
    bucket.put("server/web-2.json", b"[]")  # a writer that writes no journal: the full re-list finds it
    assert view.refresh(full=True) == {"web-2"} and view.rev("web-2") != rev
    assert view.snapshot.state("web-2").file_error is None
    assert fleet.deploy(fleet_ctx, "a", "web-2", "hello", rels[0].name).changed


def test_the_clock_and_a_watch_change_a_state_without_a_change_in_the_bucket(ctx, bucket, rels):
    """A watcher overdue, a deadline passed: the next poll recomputes that server alone."""
    from push import timestamps
    from push.fleetstate import Watcher

    fleet.deploy(ctx, "a", "web-1", "hello", rels[3].name)
    report(bucket, "web-1", {"hello": rels[3].name})
    view = FleetView(ctx)
    now = timestamps.now()
    view.watched("web-1", Watcher(last=now, back_by=now + timedelta(seconds=0.3)))
    view.refresh()
    state = view.snapshot.state("web-1")
    assert state is not None and state.stale is False and state.last_contact is not None
    web2 = view.snapshot.servers["web-2"]
    threading.Event().wait(0.4)  # past back_by
    view.refresh()  # the journal says nothing new
    state = view.snapshot.state("web-1")
    assert state is not None and state.stale is True
    assert state.stale_reason is not None and state.stale_reason.startswith("its watch of the push server")
    assert view.snapshot.servers["web-2"] is web2  # the others are carried over
    view.watched("web-1", Watcher(last=timestamps.now(), back_by=timestamps.now() + timedelta(seconds=30)))
    view.refresh()
    assert view.snapshot.state("web-1").stale is False


def test_writes_at_once_share_one_look_and_each_sees_its_own(bucket, rels, tmp_path, monkeypatch):
    """A fleet-wide deploy's writers call refresh_server at once: the calls that come while
    a snapshot is built go into one batch (one look, one snapshot), and each call returns
    only once a snapshot shows its own write. A batch that dropped a server fails here."""
    servers = [f"app-{i}" for i in range(8)]
    ctx = fleet.Context.open(bucket, make_config(tmp_path, "".join(
        f'\n[servers.{s}]\nappNames = ["hello"]\n' for s in servers)), via="test")
    view = FleetView(ctx)
    view.refresh()
    before = view.snapshot
    frozen = (dict(before.servers), dict(before.revs), dict(before.seen.files), dict(before.seen.requests))
    builds = view.builds
    # The first look waits until every other writer has called: they all queue for the next.
    first, others_in = threading.Event(), threading.Event()
    real = view._look_at_servers

    def slow_look(seen, only):
        if not first.is_set():
            first.set()
            assert others_in.wait(10)
        return real(seen, only)

    monkeypatch.setattr(view, "_look_at_servers", slow_look)
    seen_after: dict[str, str | None] = {}
    errors: list[BaseException] = []

    def write(server: str) -> None:
        try:
            fleet.deploy(ctx, "a", server, "hello", rels[1].name)
            view.refresh_server(server)
            seen_after[server] = apps_of(view, server)["hello"].desired
        except BaseException as e:  # reported by the test thread
            errors.append(e)

    threads = [threading.Thread(target=write, args=(servers[0],))]
    threads[0].start()
    assert first.wait(10)
    for s in servers[1:]:
        threads.append(threading.Thread(target=write, args=(s,)))
        threads[-1].start()
    # Each has written and is queued for the next look (the batch holds all seven).
    deadline = threading.Event()
    for _ in range(200):
        if len(view._pending.servers) == len(servers) - 1:
            break
        deadline.wait(0.05)
    assert view._pending.servers == set(servers[1:])
    others_in.set()
    for t in threads:
        t.join(10)
    assert not errors
    assert seen_after == {s: rels[1].name for s in servers}  # read-your-writes, each writer
    assert view.builds - builds == 2 and view.batched_writes == len(servers)  # one look for the seven
    # The snapshot taken before is as it was: a batch builds a new one, never edits one.
    assert frozen == (dict(before.servers), dict(before.revs), dict(before.seen.files), dict(before.seen.requests))
    assert all(before.state(s).apps[0].desired is None for s in servers)  # type: ignore[union-attr]
    assert {s for s in servers if view.rev(s) != before.rev(s)} == set(servers)


def test_a_failed_batch_fails_every_call_in_it(ctx, bucket, rels, monkeypatch):
    """A look that cannot list the bucket fails the calls whose servers it held (none is
    told its write is shown when it is not); the next call looks again."""
    view = FleetView(ctx)
    view.refresh()
    fleet.deploy(ctx, "a", "web-1", "hello", rels[1].name)
    real_list = bucket.list

    def down(*a, **k):
        raise StoreUnavailable("bucket down")

    monkeypatch.setattr(bucket, "list", down)
    with pytest.raises(StoreUnavailable):
        view.refresh_server("web-1")
    monkeypatch.setattr(bucket, "list", real_list)
    assert view.refresh_server("web-1") == {"web-1"}
    assert apps_of(view, "web-1")["hello"].desired == rels[1].name
