"""The `push` command: parses arguments and calls the model; errors become one line and an exit code.

Each front end registers its subcommands from a small module that imports nothing heavy
(see COMMAND_MODULES), so `push --help` stays fast. Usage errors exit 2.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from push import __version__
from push.errors import PushError
from push.exits import INTERRUPTED, MEANINGS, exit_code

# Modules with `register(subparsers, common)`; each adds its subcommands.
COMMAND_MODULES = [
    "push.commands",
    "push.builder.command",
    "push.fleetcli",
    "push.rolloutcli",
    "push.server.command",
    "push.demo.command",
    "push.keyscli",
    "push.completion",
]


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand takes, so they work after the subcommand name."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", metavar="URL", default=os.environ.get("PUSH_STORE"),
                        help="bucket: gs://BUCKET[/PREFIX], s3://BUCKET[/PREFIX], file:///PATH or a path "
                             "(default: $PUSH_STORE, else ~/.local/share/push)")
    common.add_argument("--config", metavar="FILE", default=None,
                        help="skiapush.conf (default: $PUSH_CONFIG, ./skiapush.conf, /etc/push/skiapush.conf)")
    common.add_argument("-v", "--verbose", action="store_true", help="log what is being done")
    return common


class Parser(argparse.ArgumentParser):
    """argparse, with "did you mean" for a mistyped command (Python 3.11's argparse has none)."""

    def error(self, message: str) -> NoReturn:
        m = re.match(r"argument \S+: invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if m:
            choices = re.findall(r"'([^']*)'", m.group(2))
            near = difflib.get_close_matches(m.group(1), choices, n=3, cutoff=0.6)
            if near:
                message += f"; did you mean {' or '.join(repr(n) for n in near)}?"
        super().error(message)


def exit_codes_text() -> str:
    return "exit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in MEANINGS)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="push",
        description="Deploy Debian packages to a fleet of servers, and roll them back.",
        epilog="A release is named by its full name, 7+ hex digits of its git hash, latest or previous.\n"
               "Shell completion: eval \"$(push completion bash)\" (or zsh).\n\n" + exit_codes_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"push {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = common_options()
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub, common)
    return parser


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except PushError as e:
        print(f"push: error: {e}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt:
        print("push: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug: still one line, with the traceback only on request
        if os.environ.get("PUSH_DEBUG"):
            raise
        print(f"push: internal error: {type(e).__name__}: {e} (set PUSH_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
