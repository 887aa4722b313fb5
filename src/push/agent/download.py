"""Downloading a release into the agent's state directory, verified before dpkg sees it.

The .deb is streamed in small chunks (memory stays flat whatever the package size) into
`{state}/downloads/*.partial`, hashed as it arrives, and renamed to `.deb` only once its
size and sha256 match the release metadata. Anything left there by a crash is deleted at
start: downloads always start over.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from push.agent.errors import DiskFull, VerificationFailed
from push.release import ReleaseInfo
from push.store import Store

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
# Keep this much free beyond the package itself: dpkg unpacks next to it.
FREE_MARGIN = 16 * 1024 * 1024


def clean(directory: Path) -> int:
    """Delete every download left in `directory` (by a crash); returns how many."""
    gone = 0
    if directory.is_dir():
        for p in directory.iterdir():
            if p.is_file() or p.is_symlink():
                p.unlink(missing_ok=True)
                gone += 1
    return gone


def fetch(store: Store, info: ReleaseInfo, directory: Path, *, rate_limit: float | None = None,
          on_bytes: Callable[[int], None] | None = None,
          check: Callable[[str, int], None] | None = None) -> Path:
    """Download `info`'s .deb into `directory`, verified; the caller deletes the file.

    VerificationFailed when size or sha256 differ from the metadata, DiskFull when there is
    no room, a StoreError when the store fails mid-way. Nothing is left behind on error.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if info.size is not None:
        usage = shutil.disk_usage(directory)
        if usage.free < info.size + FREE_MARGIN:
            raise DiskFull(f"not enough space in {directory} for {info.name}: {info.size} bytes needed "
                           f"(+{FREE_MARGIN // 2**20} MiB margin), {usage.free} free")
    stem = f"{info.app}-{uuid.uuid4().hex[:12]}"
    partial = directory / f"{stem}.partial"
    final = directory / f"{stem}.deb"
    digest = hashlib.sha256()
    size = 0
    started = time.monotonic()
    try:
        with store.open(info.release.key) as reader:
            if info.size is not None and reader.info.size != info.size:
                raise VerificationFailed(
                    f"{info.name}: the stored object is {reader.info.size} bytes, its metadata says {info.size}")
            with open(partial, "wb") as out:
                while True:
                    chunk = reader.read(CHUNK)  # only Push's errors (push.store.base)
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                    if info.size is not None and size > info.size:
                        raise VerificationFailed(f"{info.name}: more bytes than the {info.size} its metadata says")
                    if rate_limit:
                        ahead = size / rate_limit - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                # No fsync: dpkg reads it back at once, and a crash deletes it anyway.
        if info.size is not None and size != info.size:
            raise VerificationFailed(f"{info.name}: downloaded {size} bytes, its metadata says {info.size}")
        got = digest.hexdigest()
        if info.sha256 is not None and got != info.sha256:
            raise VerificationFailed(f"{info.name}: sha256 of the download is {got}, its metadata says "
                                     f"{info.sha256}: refusing to install it")
        if info.sha256 is None:
            log.warning("release has no sha256 metadata; checked by size only",
                        extra={"event": "download.unverified", "release": info.name})
        if check is not None:
            check(got, size)
        os.rename(partial, final)
        return final
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"no space left in {directory} while downloading {info.name}") from None
        raise
    finally:
        partial.unlink(missing_ok=True)
