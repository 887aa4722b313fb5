"""Prometheus metrics of one push server: requests, changes, watchers, bucket polls, triggers.

Each app has its own registry (several apps in one test process must not collide); counts
kept by the model objects are read at scrape time by a collector.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from push.notify import TargetStats
    from push.server.app import PushServer

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("push_http_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("push_http_request_seconds", "HTTP request duration by route",
                                 ["route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 300))
        self.changes = Counter("push_changes", "Changes made through this server, by action",
                               ["action"], registry=self.registry)
        self.refusals = Counter("push_refusals", "Requests refused, by HTTP status (401/403/409...)",
                                ["status"], registry=self.registry)

    def watch(self, server: PushServer) -> None:
        self.registry.register(_StateCollector(server))


class _StateCollector(Collector):
    def __init__(self, server: PushServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Any]:
        s = self.server
        yield GaugeMetricFamily("push_watchers", "Agents waiting on the watch endpoint", value=s.hub.watchers)
        yield GaugeMetricFamily("push_fleet_servers", "Servers in skiapush.conf", value=len(s.ctx.config.servers))
        yield GaugeMetricFamily("push_catalog_releases", "Releases in the catalogue cache",
                                value=len(s.ctx.catalog) if s.view.loaded else 0)
        yield CounterMetricFamily("push_bucket_polls", "Bucket listings of the fleet view", value=s.view.refreshes)
        yield CounterMetricFamily("push_bucket_poll_errors", "Failed bucket polls", value=s.hub.poll_errors)
        yield CounterMetricFamily("push_bucket_object_reads", "Objects re-read by the fleet view",
                                  value=s.view.object_reads)
        yield GaugeMetricFamily("push_bucket_poll_seconds", "Duration of the last bucket poll",
                                value=s.view.last_refresh_seconds)
        yield CounterMetricFamily("push_watch_wakeups", "Watchers woken by a change", value=s.hub.wakeups)
        ops = CounterMetricFamily("push_store_operations", "Bucket operations made by this process, by kind "
                                  "(list = one listing page; stat, read, put, delete = one object)", labels=["op"])
        for op, count in s.store.counts().items():
            ops.add_metric([op], count)
        yield ops
        t = s.ctx.triggers
        if t is not None:
            yield CounterMetricFamily("push_gce_triggers_ok", "GCE pushrev writes that worked", value=t.gce_ok)
            yield CounterMetricFamily("push_gce_triggers_failed", "GCE pushrev writes that failed", value=t.gce_failed)
        yield from _notify_metrics(s.ctx.notifier.stats())


def _notify_metrics(targets: list[TargetStats]) -> Iterator[Any]:
    """The webhooks' counts (push.notify): labelled by the webhook's name, never its URL."""
    delivered = CounterMetricFamily("push_notify_delivered", "Events a webhook accepted (2xx), by webhook and kind",
                                    labels=["webhook", "kind"])
    dropped = CounterMetricFamily("push_notify_dropped", "Events given up, by webhook, kind and reason (rejected: "
                                  "a 4xx or redirect; attempts: every attempt failed; queue_full; shutdown)",
                                  labels=["webhook", "kind", "reason"])
    retries = CounterMetricFamily("push_notify_retries", "POSTs retried after an error, 5xx or 429, by webhook",
                                  labels=["webhook"])
    queued = GaugeMetricFamily("push_notify_queued", "Events waiting to be sent, by webhook", labels=["webhook"])
    for t in targets:
        for kind, n in sorted(t.delivered.items()):
            delivered.add_metric([t.name, kind], n)
        for (kind, reason), n in sorted(t.dropped.items()):
            dropped.add_metric([t.name, kind, reason], n)
        retries.add_metric([t.name], t.retries)
        queued.add_metric([t.name], t.queued)
    yield from (delivered, dropped, retries, queued)


class MetricsMiddleware:
    """Counts every HTTP request by its route template (never the raw path: bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or ("static" if scope["path"].startswith("/static/") else "other")
            self.metrics.requests.labels(scope["method"], path, str(status["code"])).inc()
            if not path.startswith("/api/v1/watch"):
                self.metrics.latency.labels(path).observe(time.perf_counter() - start)
            if status["code"] in (401, 403, 409):
                self.metrics.refusals.labels(str(status["code"])).inc()
