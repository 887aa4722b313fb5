"""Smoke test of the fleet-scale load generator (benchmarks/bench_agents.py): a few
simulated agents against a real `push serve`, one deploy that every agent reads and reports."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_agents.py"


@pytest.mark.slow  # a push server and a fleet of simulated agents: about 12 s
def test_a_small_fleet_is_deployed_to_and_every_agent_reports_it(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_agents", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "out.json"
    assert bench.main(["--sizes", "12", "--idle", "2", "--poll-interval", "0.2", "--timeout", "120",
                       "--out", str(out)]) == 0
    [result] = json.loads(out.read_text())
    deploy = result["deploy"]
    assert deploy["servers_changed"] == 12
    assert deploy["read_count"] == 12 and deploy["reported_count"] == 12, deploy
    # The push server wrote each server file (a put) and its history records (3 puts each).
    assert deploy["server_ops"]["put"] >= 12 * 4, deploy
    # Each agent read its new file once and its release's metadata once.
    assert deploy["agent_ops"]["read"] >= 12 and deploy["agent_ops"]["stat"] >= 12, deploy
    assert result["idle"]["server_ops_per_min"]["list"] > 0
