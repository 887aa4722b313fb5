"""`push release` end to end: real dpkg-deb builds, real dpkg installs into a sandbox root.

Two releases of the test app are built once for the module, from two commits, and then
installed, upgraded, rolled back and listed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from buildapp import commit, deb_field, deb_paths, dpkg, git, installed, make_repo, push, stage_hello
from push.builder import BuildRequest, build, upload
from push.catalog import Catalog
from push.errors import Conflict
from push.release import Release
from push.store import open_store

# real builds with dpkg-deb and lintian
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_releases(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """hello 1 and hello 2, released from two commits into one local store."""
    base = tmp_path_factory.mktemp("two-releases")
    repo = make_repo(base / "repo", "1")
    store = base / "store"
    first = push("release", "hello", "--root", "stage", "--note", "first release", "--store", store, cwd=repo)
    assert first.code == 0, first.err
    hash1 = git(repo, "rev-parse", "HEAD")
    # Release names hold whole seconds: make sure the second one is in a later second.
    while datetime.now(timezone.utc).replace(microsecond=0) <= Release.parse(first.last_line).time:
        time.sleep(0.05)
    stage_hello(repo / "stage", "2")
    hash2 = commit(repo, "hello 2")
    second = push("release", "hello", "--root", "stage", "--note", "second release", "--store", store, cwd=repo)
    assert second.code == 0, second.err
    return {"repo": repo, "store": store, "names": [first.last_line, second.last_line],
            "hashes": [hash1, hash2], "base": base}


def fetch(store_dir: Path, name: str, dest: Path) -> Path:
    """Download release `name` from the store, checking it against its metadata's sha256 and size."""
    store = open_store(str(store_dir))
    info = store.stat(Release.parse(name).key)
    with store.open(Release.parse(name).key) as reader, open(dest, "wb") as f:
        for chunk in reader:
            f.write(chunk)
    data = dest.read_bytes()
    assert hashlib.sha256(data).hexdigest() == info.metadata["sha256"]
    assert len(data) == int(info.metadata["size"])
    return dest


def test_release_prints_its_name_last_and_is_in_the_catalogue(two_releases: dict) -> None:
    first = Release.parse(two_releases["names"][0])
    assert first.app == "hello"
    assert first.hash == two_releases["hashes"][0]
    names = [r.name for r in Catalog(open_store(str(two_releases["store"]))).releases("hello")]
    assert sorted(names) == sorted(two_releases["names"])


def test_release_installs_into_a_sandbox_root(two_releases: dict, tmp_path: Path) -> None:
    deb = fetch(two_releases["store"], two_releases["names"][0], tmp_path / "hello1.deb")
    root = tmp_path / "root"
    root.mkdir()
    result = dpkg(root, "-i", deb)
    assert "Setting up push-hello" in result.stdout
    assert (root / "usr/local/bin/hello").read_text() == "#!/bin/sh\necho 'hello 1'\n"
    assert (root / "usr/local/bin/hello").stat().st_mode & 0o111
    assert (root / "etc/hello/hello.conf").read_text() == "version = 1\n"
    assert "ExecStart=/usr/local/bin/hello" in (root / "etc/systemd/system/hello.service").read_text()
    version, status = installed(root, "push-hello")
    assert status == "install ok installed"
    info = Catalog(open_store(str(two_releases["store"]))).get(two_releases["names"][0])
    assert version == info.extra["version"]
    # The config and the unit are conffiles, so the agent's --purge leaves nothing behind.
    conffiles = subprocess.run(["dpkg-deb", "--info", str(deb), "conffiles"], capture_output=True, text=True,
                               check=True).stdout.split()
    assert conffiles == ["/etc/hello/hello.conf", "/etc/systemd/system/hello.service"]
    dpkg(root, "--purge", "push-hello")
    assert not (root / "etc/systemd/system/hello.service").exists()
    assert not (root / "usr/local/bin/hello").exists()


def test_second_release_is_newer_and_rolling_back_is_a_clean_downgrade(two_releases: dict, tmp_path: Path) -> None:
    deb1 = fetch(two_releases["store"], two_releases["names"][0], tmp_path / "hello1.deb")
    deb2 = fetch(two_releases["store"], two_releases["names"][1], tmp_path / "hello2.deb")
    v1, v2 = deb_field(deb1, "Version"), deb_field(deb2, "Version")
    assert subprocess.run(["dpkg", "--compare-versions", v2, "gt", v1]).returncode == 0
    root = tmp_path / "root"
    root.mkdir()
    dpkg(root, "-i", deb1)
    dpkg(root, "-i", deb2)
    assert installed(root, "push-hello") == (v2, "install ok installed")
    assert (root / "etc/hello/hello.conf").read_text() == "version = 2\n"
    rollback = dpkg(root, "-i", deb1)
    assert "downgrading push-hello" in rollback.stderr
    assert installed(root, "push-hello") == (v1, "install ok installed")
    assert (root / "usr/local/bin/hello").read_text() == "#!/bin/sh\necho 'hello 1'\n"
    assert (root / "etc/hello/hello.conf").read_text() == "version = 1\n"


def test_releases_json_lists_both_newest_first_with_all_metadata(two_releases: dict) -> None:
    result = push("releases", "hello", "--json", "--store", two_releases["store"])
    assert result.code == 0, result.err
    listed = json.loads(result.out)
    assert [r["name"] for r in listed] == two_releases["names"][::-1]
    store = open_store(str(two_releases["store"]))
    for entry, note, commit_hash in zip(listed, ["second release", "first release"], two_releases["hashes"][::-1],
                                        strict=True):
        obj = store.stat(Release.parse(entry["name"]).key)
        assert entry["app"] == "hello"
        assert entry["note"] == note
        assert entry["hash"] == commit_hash
        assert entry["dirty"] is False
        assert entry["services"] == ["hello.service"]
        assert entry["user"] and entry["host"] and entry["datetime"]
        assert entry["size"] == obj.size
        assert len(entry["sha256"]) == 64
        assert entry["extra"]["package"] == "push-hello"
        assert entry["extra"]["architecture"] == "all"
        assert entry["extra"]["version"].startswith("1.")
        # The original's keys, exactly as it wrote them.
        assert obj.metadata["appname"] == "hello"
        assert obj.metadata["userid"] == f"{entry['user']}@{entry['host']}"
        assert obj.metadata["dirty"] == "false"
        assert obj.metadata["services"] == "hello.service"
    assert listed[0]["extra"]["version"] > listed[1]["extra"]["version"]


def test_maintainer_scripts_restart_units_only_outside_a_sandbox(two_releases: dict, tmp_path: Path) -> None:
    """Run the package's real scripts where systemd seems to run (a private /run), with a
    systemctl that records its calls: they act on /, and do nothing when DPKG_ROOT is set."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs a private mount namespace (unshare -m) to fake a running systemd")
    deb = fetch(two_releases["store"], two_releases["names"][0], tmp_path / "hello.deb")
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "--control", str(deb), str(control)], check=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "systemctl").chmod(0o755)
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    script = f"""
        set -e
        mount -t tmpfs none /run && mkdir -p /run/systemd/system
        export PATH={bin_dir}:$PATH
        echo '# sandbox' >> {calls}
        DPKG_ROOT={sandbox} {control}/postinst configure
        DPKG_ROOT={sandbox} {control}/prerm remove
        DPKG_ROOT={sandbox} {control}/postrm purge
        echo '# host' >> {calls}
        {control}/postinst configure
        {control}/prerm upgrade 2
        {control}/prerm remove
        {control}/postrm remove
    """
    subprocess.run(["unshare", "-m", "sh", "-c", script], check=True, timeout=60)
    assert calls.read_text().splitlines() == [
        "# sandbox",
        "# host",
        "daemon-reload", "enable hello.service", "restart hello.service",  # postinst configure
        # prerm upgrade: nothing; the new postinst restarts
        "stop hello.service", "disable hello.service",  # prerm remove
        "daemon-reload",  # postrm remove
    ]


def test_manifest_build(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    app = repo / "app"
    (app / "config" / "__pycache__").mkdir(parents=True)
    (app / "config" / "hello.conf").write_text("greeting = manifest\n")
    (app / "config" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"cache")
    (app / "hello.sh").write_text("#!/bin/sh\necho hello\n")  # not executable: the manifest says 0755
    (app / "hello.service").write_text((repo / "stage/etc/systemd/system/hello.service").read_text())
    (app / "push.toml").write_text(textwrap.dedent("""\
        app = "hello"
        description = "hello from a manifest"
        depends = ["adduser (>= 3.11) | passwd", "ca-certificates"]
        units = ["nginx.service"]
        compression = "xz"

        [files]
        "/usr/local/bin/hello" = { src = "hello.sh", mode = "0755" }
        "/etc/hello/" = "config/"
        "/lib/systemd/system/hello.service" = "hello.service"
    """))
    commit(repo, "manifest")
    deb = tmp_path / "hello.deb"
    result = push("release", "hello", "--manifest", app, "--note", "from push.toml", "--no-upload", "-o", deb,
                  "--depends", "python3 (>= 3.11)", cwd=tmp_path)
    assert result.code == 0, result.err
    assert Release.parse(result.last_line).hash == git(repo, "rev-parse", "HEAD")
    assert deb_field(deb, "Description").startswith("hello from a manifest")
    assert deb_field(deb, "Depends") == "adduser (>= 3.11) | passwd, ca-certificates, python3 (>= 3.11)"
    members = subprocess.run(["ar", "t", str(deb)], capture_output=True, text=True, check=True).stdout.split()
    assert "data.tar.xz" in members
    paths = deb_paths(deb)
    assert "./usr/local/bin/hello" in paths
    assert "./etc/hello/hello.conf" in paths
    assert "./lib/systemd/system/hello.service" in paths
    assert not any("__pycache__" in p for p in paths)
    root = tmp_path / "root"
    root.mkdir()
    dpkg(root, "--force-depends", "-i", deb)
    assert (root / "usr/local/bin/hello").stat().st_mode & 0o777 == 0o755
    # A unit the package restarts without shipping it (a config package for nginx, say).
    postinst = subprocess.run(["dpkg-deb", "--info", str(deb), "postinst"], capture_output=True, text=True,
                              check=True).stdout
    assert "systemctl restart hello.service nginx.service" in postinst
    assert "systemctl stop hello.service ||" in subprocess.run(
        ["dpkg-deb", "--info", str(deb), "prerm"], capture_output=True, text=True, check=True).stdout


def test_prebuilt_deb_is_uploaded_as_it_is(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    deb = tmp_path / "prebuilt.deb"
    built = push("release", "hello", "--root", "stage", "--note", "build only", "--no-upload", "-o", deb, cwd=repo)
    assert built.code == 0, built.err
    store = tmp_path / "store"
    assert not store.exists()  # --no-upload touched no store
    result = push("release", "hello", "--deb", deb, "--note", "prebuilt", "--store", store, cwd=repo)
    assert result.code == 0, result.err
    info = Catalog(open_store(str(store))).get(result.last_line)
    assert info.sha256 == hashlib.sha256(deb.read_bytes()).hexdigest()
    assert info.services == ("hello.service",)
    assert info.extra["package"] == "push-hello"
    assert info.extra["version"] == deb_field(deb, "Version")
    assert info.note == "prebuilt"


def test_two_builds_in_the_same_second_never_overwrite_each_other(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    store = open_store(str(tmp_path / "store"))
    now = datetime.now(timezone.utc).replace(microsecond=0)

    for work in ("w1", "w2", "w3"):
        (tmp_path / work).mkdir()

    def request(note: str, moment: datetime) -> BuildRequest:
        return BuildRequest(app="hello", root=repo / "stage", note=note, repo=repo, lintian=False, now=moment)

    first = build(request("first", now), tmp_path / "w1", store)
    second = build(request("second", now + timedelta(microseconds=1)), tmp_path / "w2", store)
    assert first.name == second.name
    upload(store, first)
    with pytest.raises(Conflict, match="already exists"):
        upload(store, second)
    # A build that starts after the first upload is refused before it builds anything.
    with pytest.raises(Conflict, match="already exists"):
        build(request("third", now), tmp_path / "w3", store)
    assert not (tmp_path / "w3" / "tree").exists()
    releases = Catalog(store).releases("hello")
    assert [(r.name, r.note, r.sha256) for r in releases] == [(first.name, "first", first.info.sha256)]


def test_manifest_entries_overlay_a_staged_tree_without_touching_it(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "override.conf").write_text("version = overridden\n")
    (repo / "push.toml").write_text(textwrap.dedent("""\
        [files]
        "/" = "stage/"
        "/etc/hello/hello.conf" = "override.conf"
    """))
    commit(repo, "overlay")
    deb = tmp_path / "hello.deb"
    result = push("release", "hello", "--note", "overlay", "--no-upload", "-o", deb, "--no-lintian", cwd=repo)
    assert result.code == 0, result.err
    root = tmp_path / "root"
    root.mkdir()
    dpkg(root, "-i", deb)
    assert (root / "etc/hello/hello.conf").read_text() == "version = overridden\n"
    assert (root / "usr/local/bin/hello").read_text() == "#!/bin/sh\necho 'hello 1'\n"
    # The staged tree was hard-linked, never written through.
    assert (repo / "stage/etc/hello/hello.conf").read_text() == "version = 1\n"
