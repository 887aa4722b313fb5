"""Registers `push demo`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "demo", help="run the whole system on this machine",
        description="Create a local bucket, build sample apps in two versions with `push release`, start the "
                    "push server on 127.0.0.1 (no-auth) and three pulld agents with sandbox roots, and keep "
                    "them running until Ctrl-C.")
    p.add_argument("--dir", type=Path, help="work directory (default: a new temporary directory)")
    p.add_argument("--port", type=int, default=8080, help="push server port on 127.0.0.1 (default 8080)")
    p.add_argument("--app-port-base", type=int, default=8100,
                   help="sample apps listen on BASE+1.. (demo-1), BASE+101.. (demo-2), ... (default 8100)")
    p.add_argument("--no-browser", action="store_true", help="do not open a web browser")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from push.demo.run import main

    return main(args.dir, args.port, args.app_port_base, not args.no_browser)
