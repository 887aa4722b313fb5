"""A small app in a git repository, and ways to run `push release` on it, for the builder's tests.

The app `hello` is a shell script in /usr/local/bin, a config file in /etc/hello and a unit
in /etc/systemd/system: the layout the original Push's build scripts staged.
"""

from __future__ import annotations

import contextlib
import io
import os
import pty
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from push.cli import main

UNIT = """\
[Unit]
Description=hello, the builder's test app

[Service]
ExecStart=/usr/local/bin/hello
Restart=always

[Install]
WantedBy=multi-user.target
"""


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.com"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def stage_hello(root: Path, version: str) -> Path:
    """Write the staged root of hello at `version` into `root`."""
    binary = root / "usr/local/bin/hello"
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.write_text(f"#!/bin/sh\necho 'hello {version}'\n")
    binary.chmod(0o755)
    conf = root / "etc/hello/hello.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(f"version = {version}\n")
    unit = root / "etc/systemd/system/hello.service"
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(UNIT)
    return root


def make_repo(path: Path, version: str = "1") -> Path:
    """A git repository at `path` whose `stage/` is hello's staged root, committed."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    stage_hello(path / "stage", version)
    commit(path, f"hello {version}")
    return path


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        return self.out.strip().splitlines()[-1]


def push(*args: str | os.PathLike[str], cwd: Path | None = None) -> Result:
    """Run `push ARGS` in this process; its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse usage errors
            code = int(e.code or 0)
    return Result(code, out.getvalue(), err.getvalue())


def dpkg(root: Path, *args: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """dpkg against the sandbox root `root`, maintainer scripts run outside a chroot."""
    return subprocess.run(["dpkg", f"--root={root}", "--force-script-chrootless", *map(str, args)],
                          capture_output=True, text=True, check=check, timeout=120)


def installed(root: Path, package: str) -> tuple[str, str]:
    """(version, status) of `package` as the sandbox root's dpkg database has it."""
    out = subprocess.run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Version}\t${Status}",
                          package], capture_output=True, text=True, check=True).stdout
    version, status = out.split("\t")
    return version, status


def deb_field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()


def deb_paths(deb: Path) -> list[str]:
    """The paths a .deb installs, as ./usr/... (from dpkg-deb --contents)."""
    lines = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    return [line.split(None, 5)[5].split(" -> ")[0] for line in lines]


def push_on_a_terminal(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `push ARGV` as a process with its stderr on a pseudo-terminal: (exit code, what
    the terminal showed, stdout)."""
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "push.cli", *argv], cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=secondary)
        os.close(secondary)
        terminal = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            terminal += chunk
        stdout = proc.communicate(timeout=120)[0]
    finally:
        os.close(primary)
    return proc.returncode, terminal.decode(errors="replace"), stdout.decode(errors="replace")
