"""Tiny real Debian packages for the agent's tests, built with dpkg-deb and published.

Each test app `APP` is a package `push-APP` with a version file, a postinst, and a unit
/etc/systemd/system/APP.service whose ExecStart runs /usr/local/bin/APP (a shell script
that records its version and port, then sleeps). Published like the release builder does:
metadata with sha256, size, and the Debian package and version.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

from push.catalog import publish
from push.release import Release, ReleaseInfo
from push.signing import SigningKey, sign_release
from push.store import Store

EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)

DEFAULT_SCRIPT = """\
#!/bin/sh
# A test service: says which version runs (and on which port), then waits to be stopped.
mkdir -p "$PUSH_SANDBOX_ROOT/run/{app}"
echo "{version} ${{PORT:-none}}" > "$PUSH_SANDBOX_ROOT/run/{app}/running"
echo "{app} {version} up on port ${{PORT:-none}}"
exec sleep 3600
"""

DEFAULT_POSTINST = """\
#!/bin/sh
set -e
mkdir -p "$DPKG_ROOT/var/lib/{app}"
echo "{version}" >> "$DPKG_ROOT/var/lib/{app}/postinst.log"
{extra}
exit 0
"""


def git_hash(app: str, n: int) -> str:
    return hashlib.sha1(f"{app}-{n}".encode()).hexdigest()


def build_deb(workdir: Path, app: str, version: str, *, package: str | None = None, postinst_extra: str = "",
              script: str | None = None, unit: str | None = None, depends: str | None = None,
              payload_size: int = 0, compression: str = "zstd", with_unit: bool = True) -> Path:
    """Build push-APP_VERSION_all.deb in `workdir` and return its path."""
    package = package or f"push-{app}"
    tree = workdir / f"build-{package}_{version}-{os.urandom(4).hex()}"
    (tree / "DEBIAN").mkdir(parents=True)
    control = textwrap.dedent(f"""\
        Package: {package}
        Version: {version}
        Architecture: all
        Maintainer: Push tests <push@example.com>
        Description: {app}, a test app for pulld
        """)
    if depends:
        control += f"Depends: {depends}\n"
    (tree / "DEBIAN/control").write_text(control)
    postinst = tree / "DEBIAN/postinst"
    postinst.write_text(DEFAULT_POSTINST.format(app=app, version=version, extra=postinst_extra))
    postinst.chmod(0o755)
    share = tree / "usr/local/share" / app
    share.mkdir(parents=True)
    (share / "VERSION").write_text(version + "\n")
    if payload_size:
        with open(share / "payload.bin", "wb") as f:
            left = payload_size
            while left:
                n = min(left, 4 * 1024 * 1024)
                f.write(os.urandom(n))
                left -= n
    if with_unit:
        bindir = tree / "usr/local/bin"
        bindir.mkdir(parents=True)
        exe = bindir / app
        exe.write_text(script if script is not None else DEFAULT_SCRIPT.format(app=app, version=version))
        exe.chmod(0o755)
        units = tree / "etc/systemd/system"
        units.mkdir(parents=True)
        (units / f"{app}.service").write_text(unit if unit is not None else textwrap.dedent(f"""\
            [Unit]
            Description={app} (a Push test app)

            [Service]
            ExecStart=/usr/local/bin/{app}
            EnvironmentFile=-/etc/default/{app}
            Restart=on-failure

            [Install]
            WantedBy=multi-user.target
            """))
    out = workdir / f"{package}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(tree), str(out)],
                   check=True, capture_output=True)
    return out


def release_for(app: str, n: int) -> Release:
    return Release(app=app, user="tester", host="builder", time=EPOCH + timedelta(minutes=n), hash=git_hash(app, n))


def publish_deb(store: Store, app: str, n: int, deb: Path, *, version: str | None = None,
                package: str | None = None, legacy: bool = False, tamper: bool = False,
                note: str = "", signing_key: SigningKey | None = None) -> ReleaseInfo:
    """Upload `deb` as release number `n` of `app`, with the metadata the builder writes.

    `legacy`: only the original's metadata (no sha256/size/package/version).
    `tamper`: the uploaded bytes differ from what the metadata's sha256 says.
    `signing_key`: signed as `push release --signing-key` signs.
    """
    digest = hashlib.sha256()
    with open(deb, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    size = deb.stat().st_size
    rel = release_for(app, n)
    if legacy:
        info = ReleaseInfo(release=rel, note=note, services=(f"{app}.service",))
    else:
        info = ReleaseInfo(release=rel, note=note, services=(f"{app}.service",),
                           sha256=digest.hexdigest(), size=size,
                           extra={"package": package or f"push-{app}", "version": version or f"1.{n}",
                                  "architecture": "all"})
        if signing_key is not None:
            info = sign_release(info, signing_key)
    if tamper:
        data = bytearray(deb.read_bytes())
        data[len(data) // 2] ^= 0xFF
        publish(store, info, io.BytesIO(bytes(data)))
    else:
        with open(deb, "rb") as f:
            publish(store, info, f)
    return info


def make_release(store: Store, workdir: Path, app: str, n: int, **build: object) -> ReleaseInfo:
    """Build and publish release `n` of `app` (Debian version 1.n)."""
    legacy = bool(build.pop("legacy", False))
    tamper = bool(build.pop("tamper", False))
    signing_key = build.pop("signing_key", None)
    version = str(build.pop("version", f"1.{n}"))
    deb = build_deb(workdir, app, version, **build)  # type: ignore[arg-type]
    try:
        return publish_deb(store, app, n, deb, version=version, package=build.get("package"),  # type: ignore[arg-type]
                           legacy=legacy, tamper=tamper, signing_key=signing_key)  # type: ignore[arg-type]
    finally:
        deb.unlink(missing_ok=True)


def set_server_file(store: Store, server: str, entries: list[str]) -> None:
    """Overwrite server/{server}.json (tests own the store; no compare-and-swap needed)."""
    import json

    store.put(f"server/{server}.json", (json.dumps(entries, indent=2) + "\n").encode(),
              content_type="application/json")
