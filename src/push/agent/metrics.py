"""Prometheus metrics of one agent, served on a local port (`--metrics-port`, /metrics).

Each Agent has its own registry, so several agents (tests, the demo) can live in one
process without clashing.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.steps = Counter("pulld_steps", "Converge steps run", ["result"], registry=r)
        self.step_seconds = Histogram("pulld_step_seconds", "Duration of a converge step", registry=r,
                                      buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600))
        self.triggers = Counter("pulld_triggers", "Wake-ups, by source", ["source"], registry=r)
        self.server_file_reads = Counter("pulld_server_file_reads", "Conditional reads of the server file",
                                         ["changed"], registry=r)
        self.installs = Counter("pulld_installs", "Release installs", ["app", "result"], registry=r)
        self.removals = Counter("pulld_removals", "Package removals", ["app", "result"], registry=r)
        self.download_bytes = Counter("pulld_download_bytes", "Bytes of .deb downloaded", registry=r)
        self.reports = Counter("pulld_reports", "Status reports published", ["result"], registry=r)
        self.in_sync = Gauge("pulld_in_sync", "1 when the server matches its file", registry=r)
        self.failing_apps = Gauge("pulld_failing_apps", "Apps whose last install or removal failed", registry=r)
        self.last_step = Gauge("pulld_last_step_timestamp_seconds", "Unix time of the last step", registry=r)
        self.units = Gauge("pulld_unit_active", "1 when a unit of a Push package is active", ["unit"], registry=r)
        self._server: Any = None

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve /metrics on addr:port (0 picks a free port); returns the port, or 0 if it failed."""
        try:
            server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as e:
            log.warning("cannot serve metrics", extra={"event": "metrics.error", "port": port, "error": str(e)})
            return 0
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
