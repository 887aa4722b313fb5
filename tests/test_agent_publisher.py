"""push.agent.publisher: a report is written when it changed, when it is due, and after a
failed write; against the local store."""

from __future__ import annotations

from pathlib import Path

from push import status
from push.agent.metrics import Metrics
from push.agent.publisher import Publisher
from push.errors import StoreUnavailable
from push.status import AgentStatus, AppStatus
from push.store.local import LocalStore


def a_report(step: int = 1, state: str = "ok") -> AgentStatus:
    return AgentStatus(server="s1", agent_version="t", time=f"2026-01-01T00:00:{step:02d}.000000Z", step=step,
                       in_sync=state == "ok", apps={"hello": AppStatus(state=state)})


def test_only_news_is_written_until_the_heartbeat_is_due(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    pub = Publisher(store, interval=3600, metrics=Metrics())
    assert pub.publish(a_report(1)) is True
    assert pub.publish(a_report(2)) is False  # only its time and step differ
    assert status.read(store, "s1").step == 1  # type: ignore[union-attr]
    assert pub.publish(a_report(3, "pending")) is True
    assert pub.publish(a_report(4, "pending"), force=True) is True
    assert 0.9 * 3600 - 10 < pub.due_in() <= 3600  # the heartbeat's jitter
    pub.interval = 0
    assert pub.due_in() == 0 and pub.publish(a_report(5, "pending")) is True
    assert status.read(store, "s1").step == 5  # type: ignore[union-attr]


def test_a_failed_write_is_tried_again_with_the_next_report(tmp_path: Path) -> None:
    class Refusing(LocalStore):
        refuse = True

        def put(self, key, data, metadata=None, **kw):  # type: ignore[no-untyped-def]
            if self.refuse:
                raise StoreUnavailable("connection refused")
            return super().put(key, data, metadata, **kw)

    store = Refusing(tmp_path)
    metrics = Metrics()
    pub = Publisher(store, interval=3600, metrics=metrics)
    assert pub.publish(a_report(1)) is False
    assert 3590 < pub.due_in() <= 3600  # counted from the try: a refusing store is not hammered
    store.refuse = False
    assert pub.publish(a_report(2).model_copy()) is True  # nothing new, but never written
    assert metrics.reports.labels("failed")._value.get() == 1 and metrics.reports.labels("ok")._value.get() == 1


def test_heartbeats_are_jittered_so_agents_that_reported_together_drift_apart(tmp_path: Path) -> None:
    """A fleet-wide deploy makes every agent report at once; without jitter each would
    heartbeat at the same moment every minute from then on."""
    store = LocalStore(tmp_path)
    dues = []
    for _ in range(20):
        pub = Publisher(store, interval=60, metrics=Metrics())
        assert pub.publish(a_report(1)) is True
        dues.append(pub.due_in())
    assert all(0.9 * 60 - 1 < d <= 60 for d in dues)
    assert max(dues) - min(dues) > 1.0  # 20 draws from a 6-second range
