"""Push ships itself with `push release`: its two packages build from packaging/, pass lintian,
install into a sandbox root, and run there on Debian's own python3.

The two builds run side by side (each vendors Push's dependencies with pip and runs lintian,
which takes most of the time).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from buildapp import deb_field, deb_paths, dpkg, installed

# builds Push's own packages with pip and lintian: a minute
# The module fixture builds both packages with lintian: minutes of wall time on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {"pulld": "push-pulld", "push-server": "push-server"}
DEBIAN_PYTHON = Path("/usr/bin/python3")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("lintian") is None:
        pytest.fail("lintian is not installed: scripts/test installs it (apt-get install lintian)")
    out = tmp_path_factory.mktemp("push-packages")
    procs = {}
    for app in PACKAGES:
        argv = [sys.executable, "-m", "push.cli", "release", app, "--manifest", str(REPO / "packaging" / app),
                "--note", "Push's own package, built by the tests", "--no-upload", "-o", str(out / f"{app}.deb"),
                "-v"]
        procs[app] = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    for app, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        results[app] = (proc.returncode, stdout, stderr)
    for app, (code, stdout, stderr) in results.items():
        assert code == 0, f"push release {app}: {stderr}"
        # lintian ran, asked for its error tags, and found none but excused ones.
        assert "lintian: no errors" in stderr and "error tags" in stderr, stderr
        assert stdout.strip().splitlines()[-1].startswith(f"{app}/{app}:")
    return {app: out / f"{app}.deb" for app in PACKAGES}


@pytest.mark.parametrize("app", list(PACKAGES))
def test_package_fields(built: dict[str, Path], app: str) -> None:
    deb = built[app]
    assert deb_field(deb, "Package") == PACKAGES[app]
    major, minor = sys.version_info[:2]
    depends = deb_field(deb, "Depends")
    # Vendored wheels hold machine code for this Python: dpkg refuses the package elsewhere.
    assert f"python3 (>= {major}.{minor}), python3 (<< {major}.{minor + 1})" in depends
    assert "libc6" in depends and "ca-certificates" in depends
    assert deb_field(deb, "Architecture") == subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()


def test_pulld_package_contents(built: dict[str, Path]) -> None:
    paths = deb_paths(built["pulld"])
    for path in ["./usr/bin/pulld", "./lib/systemd/system/pulld.service", "./etc/default/pulld",
                 "./usr/lib/push-pulld/push/agent/main.py", "./usr/lib/push-pulld/push/builder/builder.py",
                 "./usr/lib/push-pulld/boto3/__init__.py", "./usr/lib/push-pulld/google/cloud/storage/__init__.py"]:
        assert path in paths
    assert not any("__pycache__" in p or p.endswith(".pyc") for p in paths)
    assert not any(p.startswith("./usr/lib/push-pulld/bin/") for p in paths)
    postinst = subprocess.run(["dpkg-deb", "--info", str(built["pulld"]), "postinst"], capture_output=True,
                              text=True, check=True).stdout
    # pulld replaces itself: its package starts it when stopped, and never restarts it under its own feet.
    assert "systemctl start pulld.service" in postinst and "restart" not in postinst


def test_push_server_package_contents(built: dict[str, Path]) -> None:
    paths = deb_paths(built["push-server"])
    for path in ["./usr/bin/push", "./lib/systemd/system/push-server.service", "./etc/default/push-server",
                 "./etc/push/skiapush.conf", "./usr/lib/push-server/push/server/app.py",
                 "./usr/lib/push-server/fastapi/__init__.py", "./usr/lib/push-server/uvicorn/__init__.py"]:
        assert path in paths


def test_both_install_side_by_side_and_run_on_debian_python(built: dict[str, Path], tmp_path: Path) -> None:
    if not DEBIAN_PYTHON.exists():
        pytest.skip("no Debian python3 at /usr/bin/python3")
    root = tmp_path / "root"
    root.mkdir()
    # The sandbox's dpkg database knows no python3: its dependencies are the host's.
    dpkg(root, "--force-depends", "-i", built["pulld"], built["push-server"])
    for package in PACKAGES.values():
        assert installed(root, package)[1] == "install ok installed"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PUSH_STORE"] = str(tmp_path / "store")
    (tmp_path / "store").mkdir()  # an empty store: one that does not exist is an error
    pulld = subprocess.run([str(DEBIAN_PYTHON), str(root / "usr/bin/pulld"), "--version"], capture_output=True,
                           text=True, env=env, timeout=60)
    assert pulld.returncode == 0, pulld.stderr
    assert pulld.stdout.startswith("pulld ")
    push = subprocess.run([str(DEBIAN_PYTHON), str(root / "usr/bin/push"), "releases", "--json"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert push.returncode == 0, push.stderr
    assert push.stdout.strip() == "[]"
    # The server's libraries import from the package, not from anywhere on the host.
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import fastapi, uvicorn, boto3, google.cloud.storage, "
             "push.server.app; print(fastapi.__file__)")
    imported = subprocess.run([str(DEBIAN_PYTHON), "-I", "-c", probe, str(root / "usr/lib/push-server")],
                              capture_output=True, text=True, env=env, timeout=60)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith(str(root / "usr/lib/push-server/fastapi/"))
