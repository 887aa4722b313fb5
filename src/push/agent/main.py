"""`pulld`: the agent's command line, its loop, and its structured logs.

Parses the flags, opens the store, picks the service manager (systemd on `/`, the sandbox
supervisor with `--root`), starts the triggers and /metrics, then runs converge steps when
triggered, when a retry is due, or when the poll interval passes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from push import __version__
from push.agent.agent import SELF_APP, Agent, AgentOptions
from push.agent.backoff import Backoff
from push.agent.dpkg import Dpkg
from push.agent.errors import AgentError
from push.agent.metrics import Metrics
from push.agent.services import ServiceManager, SystemdManager
from push.agent.state import StateLock
from push.agent.supervisor import SandboxSupervisor
from push.agent.triggers import GceMetadataTrigger, Wakeup, WatchTrigger, gce_instance_name
from push.agent.trust import TrustOptions
from push.errors import InvalidRequest, PushError
from push.exits import INTERRUPTED, exit_code
from push.health import DEFAULT_SETTLE
from push.names import check_server
from push.store import open_store

log = logging.getLogger("push.agent")

DEFAULT_METRICS_PORT = 9478
# Only ever used when asked for with --gce / --gce-metadata on: never probed by default.
GCE_DEFAULT_HOST = "metadata.google.internal"
POLL_WITH_TRIGGER = 300.0
POLL_WITHOUT_TRIGGER = 15.0
# After a wake-up, wait this long so that a burst of triggers runs one step.
DEBOUNCE = 0.02

_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg, and every `extra=` field."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STANDARD_ATTRS and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in record.__dict__.items()
                          if k not in _STANDARD_ATTRS and not k.startswith("_"))
        when = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{when} {record.levelname:<7} {record.getMessage()}"
        line = f"{line}  {extras}" if extras else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _size(text: str) -> float:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    t = text.strip().lower().removesuffix("b").removesuffix("/s")
    try:
        if t and t[-1] in units:
            return float(t[:-1]) * units[t[-1]]
        return float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500k, 10M)") from None


def _env_seconds(name: str, default: float) -> float:
    """A number of seconds from the environment (a bad value is one clear line, and exit 2)."""
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 86400 * 7:
        raise SystemExit(f"pulld: {name}={text!r} is not a number of seconds (e.g. 60)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pulld",
        description="The Push agent: makes this server (or a sandbox root) match its server/{server}.json "
                    "in the bucket, and reports what is actually installed and running to status/{server}.json.",
        epilog="Triggers: the push server's watch endpoint (--push-url), GCE metadata 'pushrev' "
               "(when GCE_METADATA_HOST is set, or --gce-metadata on), and the poll (--interval). See docs/pulld.md.")
    p.add_argument("--server", help="this server's name (default: the GCE instance name on GCE, else the hostname)")
    p.add_argument("--store", default=os.environ.get("PUSH_STORE"),
                   help="the bucket: gs://BUCKET, s3://BUCKET, file:///PATH "
                        "(default: $PUSH_STORE, else the local store)")
    p.add_argument("--root", type=Path, help="install into this sandbox root (dpkg --root) instead of /; "
                                             "units run under the sandbox supervisor")
    p.add_argument("--state-dir", type=Path, help="downloads and the agent's record (default /var/lib/pulld, "
                                                  "or ROOT/var/lib/pulld with --root)")
    p.add_argument("--once", action="store_true",
                   help="run one step and exit: 0 if the server then matches its file, else 1")
    p.add_argument("--interval", type=float,
                   help=f"failsafe poll, seconds (default {POLL_WITH_TRIGGER:g} with a trigger, "
                        f"{POLL_WITHOUT_TRIGGER:g} without)")
    p.add_argument("--push-url", default=os.environ.get("PUSH_URL"),
                   help="the push server, for its watch (long-poll) trigger (default: $PUSH_URL)")
    p.add_argument("--watch-timeout", type=float, default=55.0, help="long-poll timeout, seconds (default 55)")
    p.add_argument("--gce-metadata", choices=("auto", "on", "off"), default="auto",
                   help="wait on GCE metadata 'pushrev' and take the instance name from it (auto: only when "
                        f"GCE_METADATA_HOST is set; on: GCE_METADATA_HOST, else {GCE_DEFAULT_HOST})")
    p.add_argument("--gce", dest="gce_metadata", action="store_const", const="on", help="same as --gce-metadata on")
    p.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
                   help=f"serve Prometheus /metrics on 127.0.0.1:PORT (default {DEFAULT_METRICS_PORT}; 0 = off)")
    p.add_argument("--metrics-addr", default="127.0.0.1", help="address for /metrics (default 127.0.0.1)")
    p.add_argument("--download-rate-limit", type=_size, metavar="BYTES_PER_S",
                   help="limit download speed, e.g. 10M (default: unlimited)")
    p.add_argument("--backoff", type=float, default=15.0,
                   help="first retry delay after a failure, seconds; doubles each time (default 15)")
    p.add_argument("--backoff-max", type=float, default=900.0, help="longest retry delay, seconds (default 900)")
    p.add_argument("--report-interval", type=float, default=_env_seconds("PULLD_REPORT_INTERVAL", 60.0),
                   help="publish the status report at least this often, seconds (default $PULLD_REPORT_INTERVAL, "
                        "else 60): the heartbeat; readers call the agent stale after three intervals without "
                        "one. It is published at once whenever it changes")
    p.add_argument("--settle", type=float, default=DEFAULT_SETTLE, metavar="S",
                   help="health without a declared check: units must be active this long without a restart "
                        f"(default {DEFAULT_SETTLE:g})")
    p.add_argument("--service-manager", choices=("auto", "systemd", "sandbox"), default="auto",
                   help="auto: systemd on /, the sandbox supervisor with --root")
    p.add_argument("--log-format", choices=("json", "text"), default="json", help="log lines (default json)")
    p.add_argument("--stop-units", action="store_true",
                   help="with --root: stop every unit the sandbox supervisor runs there, and exit")
    trust = p.add_argument_group("trust (docs/trust.md)", "Without trusted keys nothing is verified, and the report "
                                 "says so. A flag given replaces its PULLD_* variable (read from /etc/default/pulld).")
    trust.add_argument("--trust-release-key", action="append", type=Path, metavar="FILE",
                       help="install only releases signed by this public key (NAME.pub); repeatable "
                            "(default: $PULLD_TRUST_RELEASE_KEYS, space-separated)")
    trust.add_argument("--trust-deploy-key", action="append", type=Path, metavar="FILE",
                       help="follow the server file only if its statement is signed by this public key; repeatable "
                            "(default: $PULLD_TRUST_DEPLOY_KEYS, space-separated)")
    trust.add_argument("--revoked-key", action="append", metavar="KEYID",
                       help="refuse anything signed by this key id, even if its key is trusted; repeatable "
                            "(default: $PULLD_REVOKED_KEYS, space-separated)")
    p.add_argument("--version", action="version", version=f"pulld {__version__}")
    return p


def trust_options(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> TrustOptions:
    """The trust settings: each flag, else its PULLD_* variable (space-separated)."""
    def given(flag: list[Any] | None, variable: str) -> list[str]:
        return [str(v) for v in flag] if flag else environ.get(variable, "").split()

    return TrustOptions(release_keys=tuple(Path(p) for p in given(args.trust_release_key, "PULLD_TRUST_RELEASE_KEYS")),
                        deploy_keys=tuple(Path(p) for p in given(args.trust_deploy_key, "PULLD_TRUST_DEPLOY_KEYS")),
                        revoked=tuple(given(args.revoked_key, "PULLD_REVOKED_KEYS")))


def setup_logging(fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("httpx", "httpcore", "urllib3", "botocore", "google", "boto3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _gce_host(mode: str) -> str | None:
    host = os.environ.get("GCE_METADATA_HOST")
    if mode == "off":
        return None
    if mode == "on" and not host:
        return GCE_DEFAULT_HOST  # asked for explicitly: this is a GCE instance
    return host or None


def _server_name(args: argparse.Namespace, gce_host: str | None) -> str:
    if args.server:
        return check_server(args.server)
    if gce_host:
        try:
            return check_server(gce_instance_name(gce_host))
        except Exception as e:
            raise AgentError(f"cannot read the GCE instance name from {gce_host}: {e} (use --server)") from None
    return check_server(socket.gethostname().split(".")[0])


def _reexec() -> None:
    """Replace this process with a fresh pulld (the newly installed one), same arguments."""
    log.info("restarting after self-update", extra={"event": "self-update.exec"})
    for h in logging.getLogger().handlers:
        h.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def run(args: argparse.Namespace) -> int:
    sandbox = args.root is not None and args.root.absolute() != Path("/")
    if args.stop_units:
        if not sandbox:
            raise InvalidRequest("--stop-units needs --root (on / the units belong to systemd)")
        supervisor = SandboxSupervisor(args.root)
        supervisor.close(stop_units=True)
        return 0
    gce_host = _gce_host(args.gce_metadata)
    server = _server_name(args, gce_host)
    store = open_store(args.store)
    options = AgentOptions(server=server, root=args.root.absolute() if sandbox else None, state_dir=args.state_dir,
                           backoff=Backoff(base=args.backoff, cap=args.backoff_max),
                           download_rate_limit=args.download_rate_limit, report_interval=args.report_interval,
                           self_app=SELF_APP, settle=args.settle, trust=trust_options(args))
    lock = StateLock(options.resolved_state_dir())
    manager = args.service_manager
    if manager == "auto":
        manager = "sandbox" if sandbox else "systemd"
    if manager == "sandbox":
        if not sandbox:
            raise InvalidRequest("--service-manager sandbox needs --root")
        services: ServiceManager = SandboxSupervisor(options.root)  # type: ignore[arg-type]
    else:
        services = SystemdManager()
    metrics = Metrics()
    agent = Agent(store, options, services, dpkg=Dpkg(options.sandbox_root), metrics=metrics)
    log.info("pulld starting", extra={"event": "start", "server": server, "store": store.url,
                                      "root": str(options.root or "/"), "version": __version__, "once": args.once,
                                      "trust": agent.trust.status({}).mode})
    if args.once:
        try:
            ok = agent.step()
            healthy = agent.await_health()
            ok = ok and healthy and agent.in_sync
        finally:
            agent.close()
            if isinstance(services, SandboxSupervisor):
                services.detach()  # the units keep running; the next pulld adopts them
            lock.release()
            store.close()
        log.info("step done", extra={"event": "once.done", "in_sync": agent.in_sync, "healthy": healthy})
        return 0 if ok else 1

    wakeup = Wakeup()
    stopping = False
    agent.judge.on_change = lambda: wakeup.set("health")  # a new verdict: plan (revert?) and report now

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        wakeup.set("signal")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.metrics_port:
        port = metrics.serve(args.metrics_port, args.metrics_addr)
        if port:
            log.info("metrics listening", extra={"event": "metrics", "addr": args.metrics_addr, "port": port})
    triggers: list[WatchTrigger | GceMetadataTrigger] = []
    if args.push_url:
        triggers.append(WatchTrigger(args.push_url, server, wakeup, timeout=args.watch_timeout,
                                     on_fire=lambda s: metrics.triggers.labels(s).inc()))
    if gce_host:
        triggers.append(GceMetadataTrigger(gce_host, wakeup, on_fire=lambda s: metrics.triggers.labels(s).inc()))
    for t in triggers:
        t.start()
    interval = args.interval or (POLL_WITH_TRIGGER if triggers else POLL_WITHOUT_TRIGGER)
    restart = False
    reasons: list[str] = ["start"]
    last_step = time.monotonic()
    try:
        while not stopping:
            if reasons:
                try:
                    agent.step(reasons)
                except Exception:  # a bug must not end the agent: log it, and try again later
                    log.exception("step crashed", extra={"event": "step.crash"})
                last_step = time.monotonic()
                if agent.restart_requested:
                    restart = True
                    break
            next_step = interval - (time.monotonic() - last_step)
            retry = agent.next_retry_in()
            if retry is not None:
                next_step = min(next_step, retry)
            timeout = max(0.1, min(next_step, agent.heartbeat_in()))
            reasons = wakeup.wait(timeout)
            if reasons:
                time.sleep(DEBOUNCE)
                reasons += wakeup.drain()
            elif timeout >= next_step - 0.001:
                reasons = ["poll"]
                metrics.triggers.labels("poll").inc()
            else:
                agent.heartbeat()  # nothing to do but say that we are alive
    finally:
        agent.close()
        for t in triggers:
            t.stop()
        metrics.close()
        if isinstance(services, SandboxSupervisor):
            if restart:
                services.detach()
            else:
                services.close(stop_units=True)
        services.close() if not isinstance(services, SandboxSupervisor) else None
        lock.release()
        store.close()
    if restart:
        _reexec()
    log.info("pulld stopped", extra={"event": "stop"})
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_format)
    try:
        return run(args)
    except PushError as e:
        print(f"pulld: {e}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt:
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
