"""`push rollout start|status|pause|resume|abort|promote`: staged, health-gated deploys from
the command line (docs/rollouts.md).

Like every fleet command, through a push server (--push-url / PUSH_URL: its
/api/v1/rollouts) or straight to the bucket (push.rollout.control, the code the push server
runs). `--wait` follows the rollout until it ends, one line per event, and exits 0 when it
completed, ROLLOUT_NOT_COMPLETED otherwise; straight to the bucket it also drives it (under
the rollout's lease, so a push server on the same bucket and this command never both do).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from push.cli import print_json
from push.exits import ROLLOUT_NOT_COMPLETED
from push.fleetcli import RELEASE_HELP, Direct, Remote, backend, remote_options

if TYPE_CHECKING:
    from push.rollout.control import RolloutRequest
    from push.rollout.model import Rollout

FOLLOW_INTERVAL = 0.5


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    remote = remote_options()
    p = sub.add_parser("rollout", help="deploy a release to many servers in health-gated waves",
                       description="Roll a release out in waves: each wave's servers must be healthy (by their "
                                   "agents' reports) within a deadline, then bake, before the next wave starts; "
                                   "a failure stops it and, unless --no-rollback, returns every server it "
                                   "changed to what it ran before. See docs/rollouts.md.")
    rsub = p.add_subparsers(dest="rollout_command", metavar="COMMAND", required=True)
    signer = argparse.ArgumentParser(add_help=False)
    signer.add_argument("--deploy-key", metavar="FILE", default=None,
                        help="straight to the bucket: sign the server files written with this deploy key "
                             "(default: $PUSH_DEPLOY_KEY)")
    wait = argparse.ArgumentParser(add_help=False)
    wait.add_argument("--wait", action="store_true",
                      help=f"follow it until it ends (and drive it, straight to the bucket); exit "
                           f"{ROLLOUT_NOT_COMPLETED} unless it completed")

    s = rsub.add_parser("start", parents=[common, remote, signer, wait], help="start a rollout",
                        description="Start rolling RELEASE of APP out. Servers: every server skiapush.conf allows "
                                    "APP on that runs it now (default), --servers names and globs, or --all. "
                                    "A push server on the bucket drives it; without one, use --wait.")
    s.add_argument("app", metavar="APP")
    s.add_argument("release", metavar="RELEASE", help=RELEASE_HELP.replace(" or previous", ""))
    s.add_argument("--servers", metavar="S,...", help="server names and globs (web-*), comma-separated")
    s.add_argument("--all", action="store_true", help="every server skiapush.conf allows APP on")
    s.add_argument("--waves", default="1,25%,100%",
                   help="cumulative wave sizes, counts or percentages (default: 1,25%%,100%%)")
    s.add_argument("--bake", type=float, default=60.0, metavar="SECONDS",
                   help="how long a healthy wave waits before the next (default: 60)")
    s.add_argument("--wave-deadline", type=float, default=600.0, metavar="SECONDS",
                   help="how long a wave has to become healthy (default: 600)")
    s.add_argument("--max-unhealthy", type=int, default=0, metavar="N",
                   help="unhealthy servers a wave may have (default: 0)")
    s.add_argument("--no-rollback", action="store_true", help="on failure, stop and leave the servers as they are")
    s.add_argument("--note", default="", help="why (kept in the rollout and its history records)")
    s.set_defaults(func=cmd_start)

    s = rsub.add_parser("status", parents=[common, remote, wait], help="show a rollout, or the recent ones",
                        description="Show rollout ID (its waves and servers), or without ID the recent rollouts, "
                                    "active first.")
    s.add_argument("id", nargs="?", metavar="ID")
    s.set_defaults(func=cmd_status)

    for action, text in (("pause", "stop writing and stop the wave's clocks"),
                         ("resume", "go on after a pause"),
                         ("abort", "stop and roll back the servers it changed (--no-rollback: stop only)"),
                         ("promote", "skip the rest of the current wave's bake")):
        s = rsub.add_parser(action, parents=[common, remote, signer, wait], help=text, description=text[0].upper()
                            + text[1:] + ". Carried out by the rollout's driver at its next step.")
        s.add_argument("id", metavar="ID")
        if action == "abort":
            s.add_argument("--no-rollback", action="store_true", help="stop only: leave the servers as they are")
        s.set_defaults(func=cmd_control, action=action)


# -- the two ways ---------------------------------------------------------------------------------


def _request(args: argparse.Namespace) -> RolloutRequest:
    from push.rollout.control import RolloutRequest

    servers = [s.strip() for s in args.servers.split(",") if s.strip()] if args.servers else None
    return RolloutRequest(app=args.app, release=args.release, servers=servers, all=args.all, waves=args.waves,
                          bake=args.bake, wave_deadline=args.wave_deadline, max_unhealthy=args.max_unhealthy,
                          rollback=not args.no_rollback, note=args.note)


def _answer(fleet: Remote, data: bytes) -> Rollout:
    from push.rollout.model import Rollout

    return fleet._answer(Rollout, data)


def _start(fleet: Direct | Remote, req: RolloutRequest) -> Rollout:
    if isinstance(fleet, Remote):
        return _answer(fleet, fleet._call("POST", "/api/v1/rollouts", json=req.to_json()))
    from push.rollout import control

    return control.start(fleet.ctx, fleet.who, req)


def _get(fleet: Direct | Remote, rid: str) -> Rollout:
    if isinstance(fleet, Remote):
        return _answer(fleet, fleet._call("GET", f"/api/v1/rollouts/{rid}"))
    from push.rollout import control

    return control.get(fleet.ctx, rid)


def recent_rollouts(fleet: Direct | Remote) -> list[Rollout]:
    """Recent rollouts, newest first (`push rollout status`, completion's rollout ids)."""
    if isinstance(fleet, Remote):
        from push.rollout.model import Rollout

        return fleet._answer(list[Rollout], fleet._call("GET", "/api/v1/rollouts"))
    from push.rollout import control

    return control.listing(fleet.ctx)


def _control(fleet: Direct | Remote, rid: str, action: str, rollback: bool) -> Rollout:
    if isinstance(fleet, Remote):
        return _answer(fleet, fleet._call("POST", f"/api/v1/rollouts/{rid}/{action}", json={"rollback": rollback}))
    from push.rollout import control

    return control.control(fleet.ctx, fleet.who, rid, action, rollback=rollback)


# -- printing ---------------------------------------------------------------------------------------


def _short(name: str | None) -> str:
    from push.release import short

    return short(name)


def summary(r: Rollout) -> str:
    done = sum(1 for s in r.servers.values() if s.phase == "healthy")
    return (f"{r.id}  {_short(r.release)}  {r.state}  wave {min(r.wave + 1, len(r.waves))}/{len(r.waves)}  "
            f"{done}/{len(r.servers)} healthy" + (f"  ({r.reason})" if r.reason and not r.active else ""))


def _print_rollout(r: Rollout) -> None:
    print(summary(r))
    print(f"  started {r.created[:19].replace('T', ' ')}Z by {r.who}; waves {r.plan.waves_spec} "
          f"({','.join(map(str, r.plan.waves))}), bake {r.plan.bake:g} s, deadline {r.plan.wave_deadline:g} s, "
          f"max unhealthy {r.plan.max_unhealthy}, rollback {'on' if r.plan.rollback else 'off'}")
    for i, wave in enumerate(r.waves):
        mark = "done" if wave.done else ("baking" if wave.healthy_at else ("running" if wave.started else "waiting"))
        print(f"  wave {i + 1} ({wave.size} server(s)): {mark}")
        for name in r.plan.servers:
            s = r.servers[name]
            if s.wave != i:
                continue
            detail = f"  {s.detail}" if s.detail else ""
            print(f"    {name:<20} {s.phase:<10} {s.health:<12} before {_short(s.before)}{detail}")


def _follow(fleet: Direct | Remote, r: Rollout, args: argparse.Namespace) -> int:
    """Until `r` ends: its new events, one line each (on stderr), and the final line; the exit code."""
    shown = len(r.events)
    for event in r.events:
        print(event, file=sys.stderr)
    tty = sys.stderr.isatty()

    def on_round(now: Rollout) -> None:
        nonlocal shown
        new = now.events[shown:] if len(now.events) >= shown else now.events[-1:]
        if new and tty:
            print("\r\x1b[K", end="", file=sys.stderr)
        for event in new:
            print(event, file=sys.stderr)
        shown = len(now.events)
        if tty and now.active:  # the live line of the current wave
            print(f"\r\x1b[K{summary(now)}", end="", file=sys.stderr, flush=True)

    if isinstance(fleet, Direct):
        from push.rollout.driver import Driver

        r = Driver.straight(fleet.ctx).follow(r.id, FOLLOW_INTERVAL, on_round)
    else:
        while r.active:
            time.sleep(FOLLOW_INTERVAL)
            r = _get(fleet, r.id)
            on_round(r)
    if tty:
        print("\r\x1b[K", end="", file=sys.stderr)
    if args.json:
        print_json(r.to_json())
    else:
        print(summary(r))
    return 0 if r.state == "completed" else ROLLOUT_NOT_COMPLETED


# -- the commands -----------------------------------------------------------------------------------


def cmd_start(args: argparse.Namespace) -> int:
    import os

    if args.deploy_key is None:
        args.deploy_key = os.environ.get("PUSH_DEPLOY_KEY") or None
    with backend(args) as fleet:
        r = _start(fleet, _request(args))
        if args.wait:
            return _follow(fleet, r, args)
    if args.json:
        print_json(r.to_json())
    else:
        print(f"started rollout {r.id}: {_short(r.release)} to {len(r.servers)} server(s) in waves "
              f"{','.join(map(str, r.plan.waves))}")
        if isinstance(fleet, Direct):
            print(f"a push server on this bucket drives it; without one: push rollout status {r.id} --wait",
                  file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with backend(args) as fleet:
        if args.id is None:
            rollouts = recent_rollouts(fleet)
            if args.json:
                print_json([r.to_json() for r in rollouts])
                return 0
            if not rollouts:
                print("no rollouts", file=sys.stderr)
            for r in sorted(rollouts, key=lambda r: not r.active):  # active first, each newest first
                print(summary(r))
            return 0
        r = _get(fleet, args.id)
        if args.wait:
            return _follow(fleet, r, args)
    if args.json:
        print_json(r.to_json())
    else:
        _print_rollout(r)
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    import os

    if args.deploy_key is None:
        args.deploy_key = os.environ.get("PUSH_DEPLOY_KEY") or None
    rollback = not getattr(args, "no_rollback", False)
    with backend(args) as fleet:
        r = _control(fleet, args.id, args.action, rollback)
        if args.wait:
            return _follow(fleet, r, args)
    if args.json:
        print_json(r.to_json())
    else:
        print(f"{args.action} asked: rollout {r.id} ({r.state}); its driver carries it out at its next step")
    return 0


