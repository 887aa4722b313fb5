"""`push release`: build a Debian package of an app, check it, and upload it as a release.

Thin: turns arguments into a BuildRequest for push.builder.builder, shows upload progress on a
terminal, and prints the release name as its last line of output.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from push.builder import BuiltRelease

DESCRIPTION = """\
Build a Debian package of APP, check it, and upload it to the store as a new release.

The files come from one of:
  --root DIR       a staged root laid out as the target filesystem
                   (/usr/local/bin/APP, /etc/APP/..., /etc/systemd/system/APP.service)
  --manifest FILE  a push.toml saying which files go where (default: ./push.toml)
  --deb FILE       a package built elsewhere, uploaded as it is

The package is push-APP (see --package-prefix), versioned by build time so that dpkg
orders releases, built with dpkg-deb (zstd by default), its units checked with
systemd-analyze verify and the package with lintian. Nothing is uploaded unless every
check passes. The release name is printed last.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("release", parents=[common], help="build a package of an app and upload it as a release",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("app", metavar="APP", help="the app's name")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--root", metavar="DIR", type=Path, help="staged root directory")
    src.add_argument("--manifest", metavar="FILE", type=Path, help="push.toml (or a directory holding one)")
    src.add_argument("--deb", metavar="FILE", type=Path, help="a prebuilt .deb to upload as it is")
    note = p.add_mutually_exclusive_group(required=True)
    note.add_argument("--note", metavar="TEXT", help="what this release is (required)")
    note.add_argument("--note-from-git", action="store_true",
                      help="use the subject of the last commit as the note")
    p.add_argument("--depends", metavar="SPEC", action="append", default=[],
                   help="Debian dependencies, e.g. 'python3 (>= 3.11), libc6 | musl' (repeatable)")
    p.add_argument("--package-prefix", metavar="PREFIX", default=None,
                   help="prefix of the Debian package name (default: push-)")
    p.add_argument("--architecture", metavar="ARCH", default=None,
                   help="Debian architecture (default: this machine's if the package holds machine code, else all)")
    p.add_argument("--maintainer", metavar="'NAME <EMAIL>'", default=None,
                   help="Maintainer field (default: USER <USER@HOST>)")
    p.add_argument("--description", metavar="TEXT", default=None, help="one-line package description")
    p.add_argument("--compression", choices=["zstd", "xz", "gzip", "none"], default=None,
                   help="package compression (default: zstd; xz or gzip for dpkg older than Debian 12's)")
    p.add_argument("--compression-level", metavar="N", type=int, default=None,
                   help="compression level (default: 3 for zstd, 6 for xz and gzip)")
    p.add_argument("--repo", metavar="DIR", type=Path, default=None,
                   help="the git repository the release is built from (default: the manifest's, "
                        "the root's, or the current directory's)")
    p.add_argument("--hash", metavar="SHA1", dest="git_hash", default=None,
                   help="the 40-hex commit the release is built from, where there is no git repository")
    p.add_argument("--require-clean", action="store_true",
                   help="refuse to build from uncommitted changes or a HEAD not on the upstream main branch")
    p.add_argument("--no-lintian", dest="lintian", action="store_false",
                   help="skip the lintian check (for a machine without lintian; not recommended)")
    p.add_argument("--signing-key", metavar="FILE", default=os.environ.get("PUSH_SIGNING_KEY") or None,
                   help="sign the release with this release key (a NAME.key from push keys generate; "
                        "default: $PUSH_SIGNING_KEY; unset: the release is unsigned). See docs/trust.md")
    p.add_argument("-o", "--output", metavar="FILE", type=Path, default=None, help="also keep the .deb here")
    p.add_argument("--no-upload", action="store_true", help="only build and check (with -o FILE)")
    p.set_defaults(func=cmd_release, parser=p)


class _ProgressBar:
    """One line on stderr, redrawn at most ten times a second."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label = max(total, 1), label
        self.done = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def __call__(self, n: int) -> None:
        self.done = min(self.done + n, self.total)
        now = time.monotonic()
        if now - self._drawn >= 0.1 or self.done == self.total:
            self._drawn = now
            rate = self.done / max(now - self.started, 1e-6) / 1e6
            filled = 30 * self.done // self.total
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] "
                             f"{100 * self.done // self.total:3d}% {self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB "
                             f"{rate:.1f} MB/s")
            sys.stderr.flush()

    def close(self) -> None:
        if self._drawn:  # nothing drawn when the store adopted the file
            sys.stderr.write("\n")


def _stage(stage: str) -> None:
    """A stage of the build as it starts, on a terminal: a long build is never silent."""
    print(f"push: {stage}", file=sys.stderr, flush=True)


def _quiet(stage: str) -> None:
    pass


def _keep(built: BuiltRelease, output: Path, copy: bool) -> None:
    """Put the package at `output`: moved out of the work directory, or copied (the user's own --deb)."""
    if copy:
        if output.resolve() != built.path.resolve():
            shutil.copyfile(built.path, output)
    else:
        shutil.move(built.path, output)
    built.path = output
    print(f"push: wrote {output}", file=sys.stderr)


def cmd_release(args: argparse.Namespace) -> int:
    from push.builder import BuildRequest, build, upload
    from push.builder.errors import BuildError
    from push.store import open_store

    # The root must be there, before anything else is looked at (git, the store, keys).
    if args.root is not None and not args.root.exists():
        raise BuildError(f"root directory {args.root.absolute()} does not exist (--root {args.root})")
    if args.root is not None and not args.root.is_dir():
        raise BuildError(f"root {args.root.absolute()} is not a directory (--root {args.root})")
    if args.no_upload and args.output is None:
        args.parser.error("--no-upload needs -o FILE, where the package is written")
    if not args.no_upload and args.store is None and os.environ.get("PUSH_URL"):
        # A push server takes no uploads: never upload to the default store because only
        # PUSH_URL was set.
        args.parser.error("push release uploads straight to the bucket, and only PUSH_URL is set: "
                          "give --store URL or PUSH_STORE (or --no-upload -o FILE)")
    if args.output is not None and not args.output.absolute().parent.is_dir():
        args.parser.error(f"-o {args.output}: directory {args.output.absolute().parent} does not exist")
    if args.root is None and args.manifest is None and args.deb is None:
        if not Path("push.toml").is_file():
            args.parser.error("nothing to build: give --root DIR, --manifest FILE or --deb FILE "
                              "(there is no push.toml here)")
        args.manifest = Path("push.toml")
    # Loaded before any work, so a bad key fails in a second, not after the build.
    signing_key = None
    if args.signing_key:
        from push.signing import SigningKey  # cryptography: loaded only for a signed build

        signing_key = SigningKey.load(Path(args.signing_key))
    request = BuildRequest(
        app=args.app, root=args.root, manifest=args.manifest, deb=args.deb, note=args.note,
        note_from_git=args.note_from_git, depends=args.depends, package_prefix=args.package_prefix,
        architecture=args.architecture, maintainer=args.maintainer, description=args.description,
        compression=args.compression, compression_level=args.compression_level, repo=args.repo,
        git_hash=args.git_hash, require_clean=args.require_clean, lintian=args.lintian, signing_key=signing_key,
    )
    store = None if args.no_upload else open_store(args.store)
    # Without -o, the package is built where the store can adopt it (a local store takes the
    # file instead of copying it); with -o it is kept there and uploaded as a copy.
    adopt = store is not None and args.output is None
    built = None
    try:
        with tempfile.TemporaryDirectory(prefix="push-release-") as tmp:
            stages = _stage if sys.stderr.isatty() else _quiet
            built = build(request, Path(tmp), store, adoptable=adopt, on_stage=stages)
            for warning in built.warnings:
                print(f"push: warning: {warning}", file=sys.stderr)
            if signing_key is not None:
                print(f"push: signed with release key {signing_key.key_id}", file=sys.stderr)
            if args.output is not None:
                _keep(built, args.output, copy=args.deb is not None)
            if store is not None:
                if sys.stderr.isatty():
                    _stage(f"uploading to {store.url}")
                bar = _ProgressBar(built.info.size or 0, "uploading") if sys.stderr.isatty() else None
                try:
                    upload(store, built, bar, adopt=adopt)
                finally:
                    if bar is not None:
                        bar.close()
    finally:
        if adopt and built is not None and built.owned:
            built.path.unlink(missing_ok=True)  # a failed upload leaves nothing in the store's temp directory
        if store is not None:
            store.close()
    print(built.name)
    return 0
