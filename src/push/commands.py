"""Subcommands of `push` that read the bucket directly: `push releases`.

Thin: each parses its arguments, asks the model, prints text or --json.
"""

from __future__ import annotations

import argparse
import sys

from push.cli import print_json
from push.errors import NotFound


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("releases", parents=[common], help="list releases, newest first",
                       description="List every release of APP (or of every app), newest first.")
    p.add_argument("app", nargs="?", help="only this app")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_releases)


def cmd_releases(args: argparse.Namespace) -> int:
    # Imported here: every `push` command registers this module, and `push release` needs neither.
    from push import catalog as catalog_mod
    from push import config as config_mod
    from push.store import open_store

    catalog = catalog_mod.Catalog(open_store(args.store))
    releases = catalog.releases(args.app)
    if catalog.skipped:
        why = next(iter(catalog.skipped.values()))
        print(f"push: warning: skipped {len(catalog.skipped)} object(s) under debs/ that are not valid releases, "
              f"e.g. {why}", file=sys.stderr)
    if args.app and not releases:
        cfg = config_mod.load(args.config)
        if not any(args.app in apps for apps in cfg.servers.values()):
            raise NotFound(f"unknown app {args.app!r}: no releases in {catalog.store.url} "
                           "and not in any server's appNames")
    if args.json:
        from push.fleetstate import ReleaseEntry

        print_json([ReleaseEntry.of(r).to_json() for r in releases])
        return 0
    if not releases:
        print("no releases" + (f" of {args.app}" if args.app else ""), file=sys.stderr)
        return 0
    for r in releases:
        rel = r.release
        dirty = " dirty" if r.dirty else ""
        print(f"{rel.timestamp}  {rel.app:<16} {rel.short_hash}{dirty:<6} {rel.user:<12} {r.note}")
        print(f"    {rel.name}")
    return 0
