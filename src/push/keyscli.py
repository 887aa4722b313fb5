"""`push keys generate|show`: make the Ed25519 keys that sign releases and server files, and name them.

Thin: push.signing does the work. Imports it only when a subcommand runs, so `push --help`
does not load the crypto library.
"""

from __future__ import annotations

import argparse
from pathlib import Path

GENERATE_DESCRIPTION = """\
Generate an Ed25519 key pair: DIR/NAME.key, the private key (PKCS8 PEM, mode 0600, created
so from its first byte), and DIR/NAME.pub, its public key as one line (ssh-ed25519 ...).
Prints the key id (the first 16 hex digits of the sha256 of the public key). Never
overwrites a key.

Use one key per role: a release key (push release --signing-key) lives on the build
machine or in a CI secret; a deploy key lives on the push server. The agents get only the
.pub files. No private key belongs in the bucket, in a log, or in a repository
(docs/trust.md).
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", help="generate and inspect signing keys (docs/trust.md)",
                          description="Generate and inspect the Ed25519 keys that sign releases and server files.")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)

    g = keys_sub.add_parser("generate", help="write NAME.key and NAME.pub, a new key pair",
                            description=GENERATE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("name", metavar="NAME", help="the key's name, e.g. release-2027 or deploy-push1")
    g.add_argument("--dir", metavar="DIR", type=Path, default=None,
                   help="where to write the files (default: $XDG_CONFIG_HOME/push/keys, else ~/.config/push/keys)")
    g.set_defaults(func=cmd_generate)

    s = keys_sub.add_parser("show", help="print the key id and public key of a key file",
                            description="Print the key id and the public key line of FILE, a NAME.key or a "
                                        "NAME.pub: the id is what revocation lists name.")
    s.add_argument("file", metavar="FILE", type=Path, help="a private (NAME.key) or public (NAME.pub) key file")
    s.set_defaults(func=cmd_show)


def cmd_generate(args: argparse.Namespace) -> int:
    from push.signing import default_key_dir, write_key_pair

    key, key_path, pub_path = write_key_pair(args.dir or default_key_dir(), args.name)
    print(f"key id:      {key.key_id}")
    print(f"private key: {key_path}  "
          "(mode 0600: keep it on the machine that signs; never in the bucket or a repository)")
    print(f"public key:  {pub_path}  (give this file to the agents that trust the key)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from push.signing import key_of_file

    public, private = key_of_file(args.file)
    kind = "private" if private else "public"
    print(f"key id:     {public.key_id}")
    print(f"kind:       Ed25519 {kind} key")
    print(f"public key: {public.to_text().rstrip()}")
    return 0
