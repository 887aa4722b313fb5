"""Fleet-scale benchmark: thousands of simulated agents against one real push server.

Each simulated agent speaks pulld's protocol with pulld's own code, minus dpkg: the watch
long-poll (`WatchTrigger.params` / `answered`, sent with an asynchronous httpx client), the
conditional read of `server/{server}.json` (`Store.get(..., if_generation_not_match=G)`, as
`Agent._read_server_file`), the release metadata read (a stat of the .deb, as
`Executor.release_info`), the decision (`plan.plan`, pure), the report (`report.build`,
pure) written by pulld's `Publisher` (on change, and as the 60 s heartbeat), the unit
requests looked for after a trigger (`unitrequests.pending`), and the 300 s failsafe poll.
"Installing" is recording the release's package and version as installed: no download,
no dpkg, no units. Agents run as asyncio tasks in a few worker processes (one per 5,000
agents), cheap enough that 10,000 fit beside the push server on two cores: each worker
sends its agents' HTTP through one small keep-alive connection pool (`HttpPool`, HTTP/1.1
on asyncio streams), makes their store calls on its event loop (the local store in tmpfs
answers in ~0.1 ms, less than a hop to a thread), and writes their heartbeats from one task.

The push server is the real `push serve` on the real local store. Per fleet size:

1. start: the push server, then the agents, until each has its first watch answer;
2. idle: over `--idle` seconds, the push server's bucket operations (its /metrics
   `push_store_operations`), its CPU seconds and RSS, and the agents' own operations;
3. deploy: one `POST /api/v1/apps/hello/deploy-all` of a new release; the time from the
   call to each agent having read its new file (p50, last), the call's own duration, and
   the operations per minute until the last agent has reported the release installed.

    .venv/bin/python benchmarks/bench_agents.py --sizes 1000,5000,10000 [--idle 60] [--workers N]
        [--rate 500] [--workdir /dev/shm] [--no-agents] [--no-deploy]

Prints one JSON object per size (and writes them to --out). A benchmark, not a test:
run it once per size on a quiet machine; tests/test_bench_agents.py smoke-tests it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import heapq
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx

from push import catalog, serverfile, status, timestamps, unitrequests
from push.agent import report
from push.agent.dpkg import InstalledPackage
from push.agent.metrics import Metrics
from push.agent.plan import Plan, plan
from push.agent.publisher import Publisher
from push.agent.state import AgentState
from push.agent.triggers import RECONNECT, Wakeup, WatchTrigger
from push.demo.fleet import LocalFleet
from push.errors import NotFound, PushError
from push.layout import server_file_key
from push.release import Release, ReleaseInfo
from push.serverfile import ServerFile
from push.status import AgentStatus, AppStatus
from push.store import Store, open_store
from push.store.counting import CountingStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
APP = "hello"
POLL = 300.0             # pulld's failsafe poll with a trigger
REPORT_INTERVAL = 60.0   # pulld's heartbeat
DEBOUNCE = 0.02          # pulld's wait after a wake-up


# -- one simulated agent ---------------------------------------------------------------------


class SimAgent:
    """pulld's step and triggers for one server, without dpkg (see the module docstring)."""

    def __init__(self, server: str, store: Store, push_url: str, target: str) -> None:
        self.server = server
        self.store = store
        self.target = target
        self.trigger = WatchTrigger(push_url, server, Wakeup())
        self.record = AgentState(Path("/nonexistent") / server)   # kept in memory, never saved
        self.installed: dict[str, InstalledPackage] = {}
        self.metadata: dict[str, ReleaseInfo] = {}
        self.publisher = Publisher(store, interval=REPORT_INTERVAL, metrics=_METRICS)
        self.file: ServerFile | None = None
        self.generation: str | None = None
        self.steps = 0
        self.read_target_at: float | None = None      # time.time() it read a file naming the target
        self.reported_target_at: float | None = None  # ... and reported it installed
        self.errors = 0

    def prime(self, first: ReleaseInfo, generation: str) -> None:
        """Start as an agent that has been running for a while: the first release installed,
        its report already in the bucket (written by the set-up) and its next heartbeat due
        at some moment of the coming minute, as in a fleet whose push server just restarted.
        (The Publisher's memory of its last report is set directly: a benchmark's liberty.)"""
        package, version = first.extra["package"], first.extra["version"]
        self.installed[package] = InstalledPackage(package, version, "ii ")
        self.record.app(APP).installed(first.name, package, version)
        self.metadata[first.name] = first
        self.file = ServerFile(self.server, (first.name,), generation)
        self.generation = generation
        content = self._report(self._plan()).to_json()
        self.publisher._last = {k: v for k, v in content.items() if k not in ("time", "step")}
        self.publisher._last_at = self.publisher._last_try = time.monotonic() - random.uniform(0, REPORT_INTERVAL)

    def step(self, reasons: Sequence[str]) -> None:
        self.steps += 1
        try:
            got = self.store.get(server_file_key(self.server), if_generation_not_match=self.generation)
        except NotFound:
            got = None
        if got is not None:
            data, info = got
            self.generation = info.generation
            self.file = ServerFile.parse(self.server, data, info.generation)
            if self.read_target_at is None and self.target in self.file.entries:
                self.read_target_at = time.time()
        planned = self._plan()
        if planned.needs_metadata:
            for p in planned.needs_metadata:
                assert p.desired is not None
                obj = self.store.stat(p.desired.key)
                self.metadata[p.desired.name] = ReleaseInfo.from_metadata(obj.key, obj.metadata)
            planned = self._plan()
        if planned.changes:
            self.publisher.publish(self._report(planned, working=True), force=True)
            for p in planned.changes:  # "installed": what dpkg would then say, and the record
                assert p.info is not None and p.desired is not None
                package, version = p.info.extra["package"], p.info.extra["version"]
                self.installed[package] = InstalledPackage(package, version, "ii ")
                self.record.app(p.app).installed(p.desired.name, package, version)
        if set(reasons) - {"poll"}:
            unitrequests.pending(self.store, self.server)
        self.publisher.publish(self._report(self._plan()))
        rec = self.record.apps.get(APP)
        if self.reported_target_at is None and rec is not None and rec.release == self.target:
            self.reported_target_at = time.time()

    def heartbeat(self) -> None:
        self.publisher.publish(self._report(self._plan()))

    def _plan(self) -> Plan:
        return plan(self.file, installed=self.installed, record=self.record, metadata=self.metadata,
                    failures={}, now=time.monotonic(), self_app="pulld")

    def _report(self, planned: Plan, working: bool = False) -> report.AgentStatus:
        return report.build(planned, server=self.server, hostname=self.server, time=timestamps.now_text(),
                            step=self.steps, generation=self.generation, failures={}, unit_errors={},
                            units={APP: {f"{APP}.service": "active"}}, working=working)

    async def run(self, pool: HttpPool) -> None:
        """The watch loop: pulld's WatchTrigger over the worker's connection pool, a step
        when it fires (or when the failsafe poll is due)."""
        self.step(("start",))
        failures = 0
        last_step = time.monotonic()
        query = self.trigger.url.split("/api/", 1)[1]
        path = f"/api/{query}"
        while True:
            try:
                body = await pool.get_json(path, self.trigger.params(), self.trigger.read_timeout())
                fired = self.trigger.answered(body)
                failures = 0
            except (OSError, asyncio.IncompleteReadError, TimeoutError, HttpError, ValueError, KeyError) as e:
                self.errors += 1
                kind = str(e) if isinstance(e, HttpError) else type(e).__name__
                ERRORS[kind] = ERRORS.get(kind, 0) + 1
                failures += 1
                await asyncio.sleep(RECONNECT.delay(failures))  # pulld's backoff, with its jitter
                continue
            if fired or time.monotonic() - last_step >= POLL:
                await asyncio.sleep(DEBOUNCE)
                last_step = time.monotonic()
                self.step(("watch",) if fired else ("poll",))


class HttpError(Exception):
    """An answer that is not 200 (or not HTTP)."""


class HttpPool:
    """One process's HTTP/1.1 keep-alive connections to the push server, on asyncio streams:
    a request takes an idle connection (or opens one) and gives it back after the answer.
    A long-poll holds its connection while it waits, so the pool grows to about the number
    of agents waiting, and no further. Far cheaper per request than a general client (no
    per-request objects beyond the bytes), which is what lets a few processes carry
    thousands of agents on two cores."""

    def __init__(self, url: str) -> None:
        u = urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self._head = f"Host: {u.netloc}\r\nAccept: application/json\r\n\r\n".encode()
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0
        self.requests = 0

    async def get_json(self, path: str, params: dict[str, str], timeout: float) -> dict[str, object]:
        target = f"{path}?{urlencode(params)}".encode()
        while True:
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await self._open()
            try:
                status, body = await asyncio.wait_for(self._exchange(conn, target), timeout)
            except (OSError, asyncio.IncompleteReadError) as e:
                conn[1].close()
                # The server closes a keep-alive connection idle for a few seconds: a
                # reused one that fails before its answer is retried on a new one.
                if reused and (not isinstance(e, asyncio.IncompleteReadError) or not e.partial):
                    continue
                raise
            except BaseException:
                conn[1].close()
                raise
            self._idle.append(conn)
            if status != 200:
                raise HttpError(f"HTTP {status}")
            got = json.loads(body)
            if not isinstance(got, dict):
                raise HttpError("not a JSON object")
            return got

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        conn = await asyncio.open_connection(self.host, self.port)
        self.opened += 1
        return conn

    async def _exchange(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                        target: bytes) -> tuple[int, bytes]:
        reader, writer = conn
        writer.write(b"GET " + target + b" HTTP/1.1\r\n" + self._head)
        self.requests += 1
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
            elif name.strip().lower() == "transfer-encoding":
                raise HttpError(f"{value.strip()} answer: only Content-Length is read")
        if length is None:
            raise HttpError("no Content-Length")
        return status, await reader.readexactly(length)


_METRICS = Metrics()
ERRORS: dict[str, int] = {}  # a worker's failed watch requests, by kind (an HTTP status, an exception)


async def heartbeats(agents: list[SimAgent]) -> None:
    """pulld's heartbeats for all of a worker's agents from one task: each agent's report is
    rewritten when its Publisher says it is due (every 54-60 s, its own jitter)."""
    due = [(a.publisher.due_in() + time.monotonic(), i) for i, a in enumerate(agents)]
    heapq.heapify(due)
    while True:
        at, i = due[0]
        wait = at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(min(wait, 1.0))
            continue
        a = agents[i]
        if a.publisher.due_in() <= 0:
            a.heartbeat()
        heapq.heapreplace(due, (time.monotonic() + max(0.5, a.publisher.due_in()), i))


async def worker(store_url: str, push_url: str, servers: list[str], target: str, out: Path, rate: float) -> None:
    store = CountingStore(open_store(store_url))
    first = make_release(1)[0]
    generations = json.loads((out.parent / "generations.json").read_text())
    agents = [SimAgent(s, store, push_url, target) for s in servers]
    for a in agents:
        a.prime(first, generations[a.server])
    pool = HttpPool(push_url)
    tasks = []
    for a in agents:  # started at `rate` a second, as a fleet's agents never start at one instant
        tasks.append(asyncio.create_task(a.run(pool)))
        await asyncio.sleep(1 / rate)
    tasks.append(asyncio.create_task(heartbeats(agents)))
    loop_lag = 0.0
    while True:
        state = {"ready": sum(1 for a in agents if a.trigger.rev is not None),
                 "read": {a.server: a.read_target_at for a in agents if a.read_target_at is not None},
                 "reported": {a.server: a.reported_target_at for a in agents if a.reported_target_at},
                 "ops": store.counts(), "errors": sum(a.errors for a in agents),
                 "failed": sum(1 for t in tasks if t.done()), "connections": pool.opened,
                 "requests": pool.requests, "loop_lag_s": round(loop_lag, 3), "error_kinds": ERRORS}
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(out)
        t = time.monotonic()
        await asyncio.sleep(1.0)
        loop_lag = max(0.0, time.monotonic() - t - 1.0)  # how late the event loop woke us: its backlog


# -- the coordinator -------------------------------------------------------------------------


def make_release(n: int) -> tuple[ReleaseInfo, bytes]:
    data = f"release {n} of {APP}".encode() * 100
    h = hashlib.sha1(f"{APP}{n}".encode()).hexdigest()
    info = ReleaseInfo(Release(APP, "bench", "build", T0 + timedelta(hours=n), h), note=f"v{n}",
                       services=(f"{APP}.service",), sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                       extra={"package": APP, "version": str(n)})
    return info, data


def setup(work: Path, n: int) -> tuple[str, Path, list[str], str, str]:
    from push.store.local import LocalStore

    store = LocalStore(work / "bucket")
    first, second = make_release(1), make_release(2)
    for info, data in (first, second):
        catalog.publish(store, info, data)
    servers = [f"a{i:05d}" for i in range(n)]
    config = work / "skiapush.conf"
    config.write_text("".join(f'[servers.{s}]\nappNames = ["{APP}"]\n' for s in servers))
    generations = {}
    for s in servers:
        generations[s] = serverfile.write(store, ServerFile(s, (first[0].name,), None)).generation
        # The report of an agent that runs the first release (SimAgent.prime).
        st = AgentStatus(server=s, agent_version="bench", time=timestamps.now_text(), hostname=s,
                         server_file_generation=generations[s], in_sync=True, step=1, journaled=True,
                         apps={APP: AppStatus(desired=first[0].name, installed=first[0].name, package=APP,
                                              version="1", state="ok", units={f"{APP}.service": "active"})})
        status.write(store, st)
    (work / "generations.json").write_text(json.dumps(generations))
    return str(work / "bucket"), config, servers, first[0].name, second[0].name


class Heartbeats:
    """Without agents (--no-agents): every server's report rewritten every REPORT_INTERVAL
    seconds, spread evenly over it, as a fleet of idle agents' heartbeats (no journal
    entries, as pulld's heartbeats), from a few threads; `written` says how many made it."""

    def __init__(self, store: Store, servers: list[str], threads: int = 4) -> None:
        self.store, self.servers = store, servers
        self.written = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(servers[i::threads], i, threads), daemon=True)
                         for i in range(threads)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _run(self, servers: list[str], offset: int, step: int) -> None:
        start, n = time.monotonic(), len(self.servers)
        reports = {s: status.read(self.store, s) for s in servers}
        k = 0
        while not self._stop.is_set():
            for j, server in enumerate(servers):
                due = start + (k + (offset + j * step) / n) * REPORT_INTERVAL
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return
                report = reports[server]
                if report is not None:
                    status.write(self.store, report.model_copy(update={"time": timestamps.now_text()}))
                    self.written += 1
            k += 1


def metric_ops(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=30, trust_env=False).text
    return {m[0]: float(m[1]) for m in re.findall(r'push_store_operations_total\{op="(\w+)"\} ([0-9.e+]+)', text)}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def per_minute(after: dict[str, float], before: dict[str, float], seconds: float) -> dict[str, float]:
    return {k: round((after.get(k, 0) - before.get(k, 0)) * 60 / seconds, 1) for k in after}


def worker_states(outs: list[Path]) -> list[dict[str, object]]:
    states = []
    for out in outs:
        try:
            states.append(json.loads(out.read_text()))
        except (OSError, ValueError):
            states.append({})
    return states


def summed_ops(states: list[dict[str, object]]) -> dict[str, float]:
    return summed(states, "ops")


def summed(states: list[dict[str, object]], what: str) -> dict[str, float]:
    total: dict[str, float] = {}
    for st in states:
        for k, v in dict(st.get(what) or {}).items():  # type: ignore[call-overload]
            total[k] = total.get(k, 0) + v
    return total


def run_size(n: int, *, workers: int, rate: float, idle: float, poll_interval: float | None,
             timeout: float, workdir: Path | None, agents: bool = True, deploy: bool = True) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-agents-", dir=workdir) as tmp:
        work = Path(tmp)
        t_setup = time.monotonic()
        store_url, config, servers, _, target = setup(work, n)
        result: dict[str, object] = {"agents": n, "workers": workers, "setup_s": round(time.monotonic() - t_setup, 1),
                                     "load_before": loadavg(), "date": datetime.now(UTC).isoformat(timespec="seconds")}
        fleet = LocalFleet(workdir=work / "fleet", store=store_url, config=config, servers=[])
        (work / "fleet" / "logs").mkdir(parents=True, exist_ok=True)
        extra = ["--poll-interval", str(poll_interval)] if poll_interval is not None else []
        fleet.start_server(extra)
        procs: list[subprocess.Popen[bytes]] = []
        heartbeats = None
        if not agents:
            workers = 0
            result["workers"] = "none: heartbeats written by the benchmark"
        try:
            assert fleet.push_server is not None and fleet.push_server.pid is not None
            pid = fleet.push_server.pid
            outs = [work / f"worker-{i}.json" for i in range(workers)]
            t_start = time.monotonic()
            for i in range(workers):
                share = servers[i::workers]
                procs.append(subprocess.Popen(
                    [sys.executable, __file__, "--worker", "--store", store_url, "--push-url", fleet.url,
                     "--target", target, "--out", str(outs[i]), "--rate", str(rate), "--servers",
                     ",".join(share)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=open(work / f"worker-{i}.log", "wb")))  # noqa: SIM115 - closed with the process
            deadline = time.monotonic() + timeout
            while agents and sum(int(s.get("ready", 0)) for s in worker_states(outs)) < n:  # type: ignore[call-overload]
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"agents did not all start: {worker_states(outs)}")
                time.sleep(1)
            result["start_s"] = round(time.monotonic() - t_start, 1)
            if not agents:
                heartbeats = Heartbeats(open_store(store_url), servers)
                heartbeats.start()
            time.sleep(min(idle, 10))  # let the start's reports and polls settle
            written0 = heartbeats.written if heartbeats else 0

            # Idle.
            ops0, cpu0, agents0, t0 = metric_ops(fleet.url), cpu_seconds(pid), summed_ops(worker_states(outs)), \
                time.monotonic()
            gen0 = sum(cpu_seconds(p.pid) for p in procs)
            time.sleep(idle)
            ops1, cpu1, agents1, t1 = metric_ops(fleet.url), cpu_seconds(pid), summed_ops(worker_states(outs)), \
                time.monotonic()
            gen1 = sum(cpu_seconds(p.pid) for p in procs)
            states = worker_states(outs)
            result["idle"] = {"server_ops_per_min": per_minute(ops1, ops0, t1 - t0),
                              "agent_ops_per_min": per_minute(agents1, agents0, t1 - t0),
                              "server_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
                              "server_rss_mb": round(rss_mb(pid), 1), "server_fds": open_fds(pid),
                              "generator_cpu_pct": round(100 * (gen1 - gen0) / (t1 - t0), 1),
                              "generator_loop_lag_s": max((float(s.get("loop_lag_s", 0)) for s in states),  # type: ignore[arg-type]
                                                          default=0.0),
                              "watch_errors": sum(int(s.get("errors", 0)) for s in states)}  # type: ignore[call-overload]
            if heartbeats is not None:
                result["idle"]["heartbeats_per_min"] = round((heartbeats.written - written0) * 60 / (t1 - t0), 1)  # type: ignore[index]

            if not deploy:
                result["load_after"] = loadavg()
                return result
            # A fleet-wide deploy.
            t_deploy = time.time()
            m0 = time.monotonic()
            r = httpx.post(f"{fleet.url}/api/v1/apps/{APP}/deploy-all", json={"release": target}, timeout=timeout,
                           trust_env=False)
            call_s = time.monotonic() - m0
            r.raise_for_status()
            ok = sum(1 for o in r.json()["outcomes"] if o["ok"])
            rss_peak = rss_mb(pid)
            lag_peak = 0.0
            if not agents:
                time.sleep(10)  # the polls after the last write
            states = worker_states(outs)
            while agents:
                states = worker_states(outs)
                reported = sum(len(dict(s.get("reported") or {})) for s in states)  # type: ignore[call-overload]
                rss_peak = max(rss_peak, rss_mb(pid))
                lag_peak = max([lag_peak, *(float(s.get("loop_lag_s", 0)) for s in states)])  # type: ignore[arg-type]
                if reported >= n or time.monotonic() - m0 > timeout:
                    break
                time.sleep(0.5)
            t2 = time.monotonic()
            ops2, cpu2, agents2 = metric_ops(fleet.url), cpu_seconds(pid), summed_ops(states)
            reads = sorted(t - t_deploy for s in states for t in dict(s.get("read") or {}).values())  # type: ignore[call-overload]
            reps = sorted(t - t_deploy for s in states for t in dict(s.get("reported") or {}).values())  # type: ignore[call-overload]
            result["deploy"] = {
                "servers_changed": ok, "call_s": round(call_s, 1),
                "read_p50_s": round(statistics.median(reads), 1) if reads else None,
                "read_last_s": round(reads[-1], 1) if reads else None, "read_count": len(reads),
                "reported_last_s": round(reps[-1], 1) if reps else None, "reported_count": len(reps),
                "window_s": round(t2 - m0, 1),
                "server_ops": {k: ops2.get(k, 0) - ops1.get(k, 0) for k in ops2},
                "server_ops_per_min": per_minute(ops2, ops1, t2 - t1),
                "agent_ops": {k: agents2.get(k, 0) - agents1.get(k, 0) for k in agents2},
                "server_cpu_s": round(cpu2 - cpu1, 1), "server_rss_peak_mb": round(rss_peak, 1),
                "watch_errors": sum(int(s.get("errors", 0)) for s in states),  # type: ignore[call-overload]
                "watch_error_kinds": summed(states, "error_kinds"),
                "generator_loop_lag_peak_s": lag_peak,
                "connections_opened": sum(int(s.get("connections", 0)) for s in states),  # type: ignore[call-overload]
            }
            result["load_after"] = loadavg()
            return result
        finally:
            if heartbeats is not None:
                heartbeats.stop()
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            fleet.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,5000,10000")
    p.add_argument("--workers", type=int, default=0, help="agent processes (default: one per 2,500 agents, 1 to 4)")
    p.add_argument("--rate", type=float, default=500.0, help="agents started a second, per agent process")
    p.add_argument("--idle", type=float, default=60.0, help="seconds of the idle measurement")
    p.add_argument("--poll-interval", type=float, help="the push server's --poll-interval")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--out", type=Path)
    p.add_argument("--no-agents", action="store_true",
                   help="no agents: only the push server, with every report rewritten each minute "
                        "(the bucket's side of idle heartbeats); the deploy is timed without readers")
    p.add_argument("--no-deploy", action="store_true", help="measure start and idle only")
    p.add_argument("--workdir", type=Path, help="where the bucket and logs go (default: $TMPDIR; /dev/shm "
                                                "takes the disk out of the figures)")
    # The worker side (started by the coordinator).
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    p.add_argument("--push-url", help=argparse.SUPPRESS)
    p.add_argument("--target", help=argparse.SUPPRESS)
    p.add_argument("--servers", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        random.seed()
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # at once, whatever the event loop is doing
        asyncio.run(worker(args.store, args.push_url, args.servers.split(","), args.target, args.out, args.rate))
        return 0
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        workers = args.workers or max(1, min(4, -(-n // 5000)))
        result = run_size(n, workers=workers, rate=args.rate, idle=args.idle,
                          poll_interval=args.poll_interval, timeout=args.timeout, workdir=args.workdir,
                          agents=not args.no_agents, deploy=not args.no_deploy)
        print(json.dumps(result), flush=True)
        results.append(result)
        if args.out:
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PushError as e:
        sys.exit(f"bench_agents: {e}")
