"""`push releases`: the releases of an app (or of every app), newest first.

Thin: parses its arguments, asks the fleet (straight to the bucket or through a push
server, as push.fleetcli's backend chooses), prints text or --json.
"""

from __future__ import annotations

import argparse
import sys

from push.cli import print_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    from push.fleetcli import remote_options

    p = sub.add_parser("releases", parents=[common, remote_options()], help="list releases, newest first",
                       description="List every release of APP (or of every app), newest first. A release "
                                   "is named elsewhere by its full name (the second line), 7+ hex digits "
                                   "of its git hash (the first), latest or previous.")
    p.add_argument("app", nargs="?", help="only this app")
    p.set_defaults(func=cmd_releases)


def cmd_releases(args: argparse.Namespace) -> int:
    from push.fleetcli import backend

    # skiapush.conf is optional here: a build machine lists releases without one.
    with backend(args, config_required=False) as fleet:
        releases = fleet.releases(args.app)
    if args.json:
        print_json([r.to_json() for r in releases])
        return 0
    if not releases:
        print("no releases" + (f" of {args.app}" if args.app else ""), file=sys.stderr)
        return 0
    for r in releases:
        dirty = " dirty" if r.dirty else ""
        print(f"{r.datetime}  {r.app:<16} {r.hash[:7]}{dirty:<6} {r.user:<12} {r.note}")
        print(f"    {r.name}")
    return 0
