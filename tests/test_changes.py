"""The fleet's change journal (push.changes) and the fleet view's polls on it: an idle poll
costs one listing whatever the fleet's size, writes by Push's writers (another push server,
the CLI, pulld's reports, unit requests) are seen at the next poll, and writers that write
no journal are seen at the next full re-list."""

from __future__ import annotations

import time

import pytest

from fleetdata import make_config, make_release, report
from push import changes, fleet, layout, serverfile, status, unitrequests
from push.agent.metrics import Metrics
from push.agent.publisher import Publisher
from push.fleetview import FleetView
from push.serverfile import ServerFile
from push.store.counting import CountingStore


@pytest.fixture
def rels(bucket):
    return [make_release(bucket, "hello", n) for n in range(1, 3)]


def fleet_of(tmp_path, bucket, rels, n: int) -> tuple[fleet.Context, list[str]]:
    servers = [f"x{i:04d}" for i in range(n)]
    config = make_config(tmp_path, "".join(f'\n[servers.{s}]\nappNames = ["hello"]\n' for s in servers))
    for s in servers:
        bucket.put(layout.server_file_key(s), f'["{rels[0].name}"]'.encode())  # as the original tools write
        report(bucket, s, {"hello": rels[0].name})
    return fleet.Context.open(bucket, config, via="test"), servers


def view_on(ctx: fleet.Context, store: CountingStore, **kw: float) -> FleetView:
    return FleetView(fleet.Context.open(store, ctx.config, catalog=ctx.catalog), **kw)


@pytest.mark.parametrize("n", [20, pytest.param(1001, marks=pytest.mark.slow)])
def test_an_idle_poll_is_one_listing_whatever_the_fleet_size(tmp_path, bucket, rels, n):
    ctx, _ = fleet_of(tmp_path, bucket, rels, n)
    # The fleet was written long ago: its journal entries are gone (within SKEW_NS of a full
    # look, a poll would still list and check each once, as a writer's clock may lag).
    for info in list(bucket.list(layout.CHANGES)):
        bucket.delete(info.key)
    counted = CountingStore(bucket)
    view = view_on(ctx, counted)
    view.refresh(include_catalog=False)  # the first look is the full one: every file and report read
    assert view.object_reads >= 2 * n
    before, snapshot = counted.counts(), view.snapshot
    for _ in range(3):
        assert view.refresh(include_catalog=False) == set()
    after = counted.counts()
    assert {k: after[k] - before[k] for k in after} == {"list": 3, "stat": 0, "read": 0, "put": 0, "delete": 0}
    assert view.snapshot is snapshot


def test_writes_by_push_writers_elsewhere_are_seen_at_the_next_poll(tmp_path, bucket, rels):
    ctx, servers = fleet_of(tmp_path, bucket, rels, 5)
    view = view_on(ctx, CountingStore(bucket), full_interval=3600)
    view.refresh(include_catalog=False)
    reads = view.object_reads
    # Another front end (a second push server, the CLI straight to the bucket) deploys.
    other = fleet.Context.open(bucket, ctx.config, catalog=ctx.catalog, via="elsewhere")
    fleet.deploy(other, "a", servers[1], "hello", rels[1].name)
    rev = view.rev(servers[1])
    assert view.refresh(include_catalog=False) == {servers[1]}
    assert view.snapshot.state(servers[1]).apps[0].desired == rels[1].name  # type: ignore[union-attr]
    assert view.rev(servers[1]) != rev and view.object_reads == reads + 1  # that one file, nothing else
    # pulld reports something new: the report is journaled and read.
    pub = Publisher(bucket, interval=60, metrics=Metrics())
    st = status.read(bucket, servers[1])
    assert st is not None
    st.apps["hello"].installed = rels[1].name
    assert pub.publish(st)
    view.refresh(include_catalog=False)
    assert view.report(servers[1]).apps["hello"].installed == rels[1].name  # type: ignore[union-attr]
    # A unit request: the server's watch revision moves.
    rev = view.rev(servers[2])
    unitrequests.create(bucket, servers[2], "hello", "hello.service", "restart", "a")
    assert view.refresh(include_catalog=False) == {servers[2]} and view.rev(servers[2]) != rev


def test_writers_without_a_journal_are_seen_at_the_full_relist(tmp_path, bucket, rels):
    ctx, servers = fleet_of(tmp_path, bucket, rels, 3)
    view = view_on(ctx, CountingStore(bucket), full_interval=3600)
    view.refresh(include_catalog=False)
    bucket.put(layout.server_file_key(servers[0]), f'["{rels[1].name}"]'.encode())  # the original tools
    assert view.refresh(include_catalog=False) == set()  # not in the journal: not seen yet
    assert view.refresh(include_catalog=False, full=True) == {servers[0]}
    assert view.snapshot.state(servers[0]).apps[0].desired == rels[1].name  # type: ignore[union-attr]
    # And by time: a view whose full re-list is due looks at everything.
    bucket.put(layout.server_file_key(servers[0]), f'["{rels[0].name}"]'.encode())
    view.full_interval = 0
    assert view.refresh(include_catalog=False) == {servers[0]}


def test_a_heartbeat_is_not_reread_until_the_copy_is_old(tmp_path, bucket, rels):
    ctx, servers = fleet_of(tmp_path, bucket, rels, 2)
    view = view_on(ctx, CountingStore(bucket), full_interval=3600)
    view.refresh(include_catalog=False)
    pub = Publisher(bucket, interval=0, metrics=Metrics())
    st = status.read(bucket, servers[0])
    assert st is not None
    st = st.model_copy(update={"journaled": True})  # as pulld's reports say
    assert pub.publish(st)  # news from a journaling agent
    view.refresh(include_catalog=False)
    reads = view.object_reads
    assert pub.publish(st.model_copy(update={"time": "2030-01-01T00:00:00.000000Z"}))  # a heartbeat
    view.refresh(include_catalog=False, full=True)
    assert view.object_reads == reads  # its generation moved, but only its time did
    view.report_reread = 0
    view.refresh(include_catalog=False, full=True)
    assert view.object_reads == reads + 1
    assert view.report(servers[0]).time.startswith("2030")  # type: ignore[union-attr]
    # An agent that does not journal (pulld before this one: its reports do not say so) is
    # re-read at every full re-list.
    view.report_reread = 3600
    report(bucket, servers[1], {"hello": None})
    view.refresh(include_catalog=False, full=True)
    assert view.report(servers[1]).apps["hello"].installed is None  # type: ignore[union-attr]


def test_journal_entries_are_given_once_and_pruned_when_old(bucket):
    journal = changes.Journal(bucket)
    changes.record(bucket, changes.SERVER, "web-1")
    changes.record(bucket, changes.STATUS, "web-1")
    assert journal.read() == [("server", "web-1"), ("status", "web-1")]
    assert journal.read() == []
    old = time.time_ns() - 2 * 3600 * 10**9
    bucket.put(layout.change_key(f"{old:020d}-abcdef01", "server", "web-2"), b"")
    assert journal.read() == []  # older than the cursor's window: the full re-list's business
    assert changes.prune(bucket) == 1
    assert [layout.change_entry(i.key)[1:] for i in bucket.list(layout.CHANGES)] == [  # type: ignore[index]
        ("server", "web-1"), ("status", "web-1")]


def test_serverfile_writes_journal_after_the_write(bucket, rels):
    serverfile.write(bucket, ServerFile("web-1", (rels[0].name,), None))
    [entry] = list(bucket.list(layout.CHANGES))
    assert layout.change_entry(entry.key)[1:] == ("server", "web-1")  # type: ignore[index]
