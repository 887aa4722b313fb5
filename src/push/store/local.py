"""The embedded store: a local directory, with the same guarantees as a cloud bucket.

Each object is one file whose first line is a JSON header (generation and metadata)
followed by the contents, so a write is a single atomic rename: contents and metadata
never disagree, even after a crash. Compare-and-swap holds across processes because the
precondition check and the rename happen under an exclusive lock on a per-key lock file.

A large file written in `adoption_dir()` (a freshly built package) becomes an object without
being copied: `put_file(..., adopt=True)` moves it into the store's temp directory, inserts
room for the header in front of its contents (fallocate's FALLOC_FL_INSERT_RANGE: ext4 and
XFS move extents, no data), writes the header there padded with spaces to whole blocks
(JSON allows the spaces; readers are unchanged), fsyncs it and renames it into place like
any other write. Where the file system cannot insert a range, the file is copied instead.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from push.errors import Conflict, CorruptObject, NotFound, StoreUnavailable
from push.store.base import CHUNK_SIZE, ObjectInfo, Page, Reader, Store, check_key


class _FileReader(Reader):
    def __init__(self, f: BinaryIO, info: ObjectInfo, url: str) -> None:
        self._f = f
        self.info = info
        self._url = url

    def read(self, size: int = -1) -> bytes:
        try:
            return self._f.read(size)
        except OSError as e:
            raise StoreUnavailable(f"cannot read {self.info.key} from {self._url}: {e.strerror}",
                                   store=self._url, key=self.info.key) from e

    def close(self) -> None:
        self._f.close()


class LocalStore(Store):
    lists_metadata = True
    listing_reads_objects = True

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        self._objects = self.root / "objects"
        self._locks = self.root / ".locks"
        self._tmp = self.root / ".tmp"
        self._cursors: dict[tuple[str, str], Iterator[str]] = {}
        self._cursors_lock = threading.Lock()
        try:
            not_a_directory = self.root.exists() and not self.root.is_dir()
        except OSError as e:
            raise StoreUnavailable(f"cannot use local store {self.root}: {e.strerror}", store=self.url) from e
        if not_a_directory:
            raise StoreUnavailable(f"local store {self.root} is not a directory", store=self.url)

    def _unavailable(self, doing: str, key: str, e: OSError) -> StoreUnavailable:
        if e.errno == errno.ENOSPC:
            return StoreUnavailable(f"no space left {doing} {key} in {self.url}", store=self.url, key=key)
        return StoreUnavailable(f"cannot {doing} {key} in {self.url}: {e.strerror or e}", store=self.url, key=key)

    def _make_dirs(self, key: str) -> None:
        # Created on first write, so reading a store that does not exist creates nothing.
        try:
            for d in (self._objects, self._locks, self._tmp):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._unavailable("write", key, e) from e

    # -- paths and headers -------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self._objects / check_key(key)

    def _read_header(self, f: BinaryIO, key: str, path: Path) -> ObjectInfo:
        line = f.readline()
        try:
            header = json.loads(line)
            generation, metadata = str(header["generation"]), dict(header["metadata"])
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptObject(f"{key} in {self.url} is damaged: {path} has no valid header",
                                store=self.url, key=key) from e
        st = os.fstat(f.fileno())
        return ObjectInfo(
            key=key,
            generation=generation,
            size=st.st_size - len(line),
            metadata=metadata,
            updated=datetime.fromtimestamp(st.st_mtime, timezone.utc),
        )

    def _damaged(self, key: str, error: CorruptObject) -> ObjectInfo:
        """A listing's entry for an object whose header is damaged; its generation follows
        the file, so a repaired object is read again."""
        try:
            st = self._path(key).stat()
        except OSError:
            st = None
        generation = f"damaged-{st.st_mtime_ns}-{st.st_size}" if st is not None else "damaged"
        return ObjectInfo(key=key, generation=generation, size=st.st_size if st is not None else 0,
                          damaged=str(error))

    def _open_object(self, key: str) -> tuple[BinaryIO, ObjectInfo]:
        path = self._path(key)
        try:
            f = open(path, "rb")  # noqa: SIM115 - handed to the caller
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            # NotADirectoryError: a key below an object, e.g. "a/b" when "a" is an object.
            raise NotFound(f"{key} not found in {self.url}", key=key) from None
        except OSError as e:
            raise self._unavailable("read", key, e) from e
        try:
            return f, self._read_header(f, key, path)
        except OSError as e:
            f.close()
            raise self._unavailable("read", key, e) from e
        except BaseException:
            f.close()
            raise

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        self._make_dirs(key)
        lock_path = self._locks / hashlib.sha256(key.encode()).hexdigest()[:40]
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise self._unavailable("lock", key, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _current_generation(self, key: str) -> str | None:
        try:
            f, info = self._open_object(key)
        except NotFound:
            return None
        f.close()
        return info.generation

    @staticmethod
    def _check_precondition(key: str, current: str | None, if_generation_match: str | None,
                            if_absent: bool) -> None:
        if if_absent and current is not None:
            raise Conflict(f"{key} already exists", key=key)
        if if_generation_match is not None and current != if_generation_match:
            now = "is absent" if current is None else f"is at generation {current}"
            raise Conflict(f"{key} changed: expected generation {if_generation_match}, it {now}", key=key)

    # -- the Store interface -------------------------------------------------------------

    def stat(self, key: str) -> ObjectInfo:
        f, info = self._open_object(key)
        f.close()
        return info

    def open(self, key: str) -> Reader:
        f, info = self._open_object(key)
        return _FileReader(f, info, self.url)

    def put(self, key: str, data: bytes | BinaryIO, metadata: dict[str, str] | None = None, *,
            if_generation_match: str | None = None, if_absent: bool = False,
            content_type: str = "application/octet-stream") -> ObjectInfo:
        path = self._path(key)
        generation = str(time.time_ns())
        header = json.dumps({"generation": generation, "metadata": metadata or {},
                             "content_type": content_type}).encode() + b"\n"
        self._make_dirs(key)
        tmp = self._tmp / f"{os.getpid()}-{os.urandom(16).hex()}"
        try:
            # The contents are written before the lock is taken, so a slow upload never
            # holds up other writers; only the check and the rename are serialised.
            with open(tmp, "wb") as f:
                f.write(header)
                if isinstance(data, (bytes, bytearray, memoryview)):
                    f.write(data)
                else:
                    _copy_stream(data, f)
                f.flush()
                os.fsync(f.fileno())
                size = f.tell() - len(header)
            with self._locked(key):
                current = self._current_generation(key)
                self._check_precondition(key, current, if_generation_match, if_absent)
                path.parent.mkdir(parents=True, exist_ok=True)
                os.rename(tmp, path)
                _fsync_dir(path.parent)
        except OSError as e:
            raise self._unavailable("write", key, e) from e
        finally:
            tmp.unlink(missing_ok=True)
        return ObjectInfo(key=key, generation=generation, size=size,
                          metadata=dict(metadata or {}), updated=datetime.now(timezone.utc))

    def adoption_dir(self) -> Path:
        self._make_dirs("a built file")
        return self._tmp

    def put_file(self, key: str, path: Path, metadata: dict[str, str] | None = None, *, if_absent: bool = False,
                 content_type: str = "application/octet-stream", adopt: bool = False) -> ObjectInfo:
        if not adopt:
            return super().put_file(key, path, metadata, if_absent=if_absent, content_type=content_type)
        final = self._path(key)
        generation = str(time.time_ns())
        header = json.dumps({"generation": generation, "metadata": metadata or {},
                             "content_type": content_type}).encode()
        self._make_dirs(key)
        tmp = self._tmp / f"{os.getpid()}-{os.urandom(16).hex()}"
        try:
            try:
                os.rename(path, tmp)  # ours from here on, and out of the caller's way
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                return super().put_file(key, path, metadata, if_absent=if_absent, content_type=content_type)
            with open(tmp, "r+b") as f:
                size = os.fstat(f.fileno()).st_size
                block = os.fstatvfs(f.fileno()).f_bsize
                room = -(-(len(header) + 1) // block) * block
                if not _insert_range(f.fileno(), room):
                    f.seek(0)
                    return self.put(key, f, metadata, if_absent=if_absent, content_type=content_type)
                f.write(header + b" " * (room - len(header) - 1) + b"\n")
                f.flush()
                os.fsync(f.fileno())
            with self._locked(key):
                self._check_precondition(key, self._current_generation(key), None, if_absent)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(tmp, final)
                _fsync_dir(final.parent)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise StoreUnavailable(f"no space left writing {key} to {self.url}") from e
            raise StoreUnavailable(f"cannot write {key} to {self.url}: {e.strerror}") from e
        finally:
            tmp.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
        return ObjectInfo(key=key, generation=generation, size=size,
                          metadata=dict(metadata or {}), updated=datetime.now(timezone.utc))

    def list_page(self, prefix: str, token: str | None = None, page_size: int = 1000,
                  start_after: str | None = None) -> Page:
        after = max(filter(None, (token, start_after)), default=None)
        # A listing that goes on from the page this process just served continues the same
        # walk, instead of re-reading and re-sorting every directory up to where it was.
        keys = self._cursors.pop((prefix, after), None) if token and after is not None else None
        if keys is None:
            keys = self._listed_keys(prefix, after)
        items: list[ObjectInfo] = []
        for key in keys:
            try:
                items.append(self.stat(key))
            except NotFound:  # deleted while we listed
                continue
            except CorruptObject as e:  # listed as damaged: its readers skip and count it
                items.append(self._damaged(key, e))
            if len(items) == page_size:
                with self._cursors_lock:
                    self._cursors[(prefix, key)] = keys
                    while len(self._cursors) > 32:
                        self._cursors.pop(next(iter(self._cursors)))
                return Page(items, key)
        return Page(items, None)

    def list_keys(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        return self._listed_keys(prefix, start_after)

    def _listed_keys(self, prefix: str, after: str | None) -> Iterator[str]:
        """`_walk_keys`, with a fault of the file system as the store's StoreUnavailable."""
        keys = self._walk_keys(prefix, after)
        while True:
            try:
                key = next(keys, None)
            except OSError as e:
                raise self._unavailable("list", prefix or "the keys", e) from e
            if key is None:
                return
            yield key

    def _walk_keys(self, prefix: str, after: str | None) -> Iterator[str]:
        """Keys under `prefix` greater than `after`, in lexicographic order, lazily."""
        slash = prefix.rfind("/")
        base_rel, name_prefix = prefix[: slash + 1], prefix[slash + 1:]
        base = self._objects / base_rel if base_rel else self._objects
        yield from self._walk_dir(base, base_rel, name_prefix, after)

    def _walk_dir(self, directory: Path, rel: str, name_prefix: str, after: str | None) -> Iterator[str]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        # Sorting a directory by name + "/" puts "a/..." where "a/" falls among its
        # siblings, which makes the depth-first walk yield keys in true byte order.
        sortable = []
        for e in entries:
            if not e.name.startswith(name_prefix):
                continue
            is_dir = e.is_dir(follow_symlinks=False)
            sortable.append((e.name + "/" if is_dir else e.name, is_dir))
        sortable.sort()
        for name, is_dir in sortable:
            key = rel + name
            if is_dir:
                # Skip whole subtrees that lie entirely at or before `after`.
                if after is not None and key < after[: len(key)]:
                    continue
                yield from self._walk_dir(directory / name[:-1], key, "", after)
            elif after is None or key > after:
                yield key

    def delete(self, key: str, *, if_generation_match: str | None = None) -> None:
        path = self._path(key)
        with self._locked(key):
            current = self._current_generation(key)
            if current is None:
                raise NotFound(f"{key} not found in {self.url}", key=key)
            self._check_precondition(key, current, if_generation_match, False)
            try:
                path.unlink()
            except OSError as e:
                raise self._unavailable("delete", key, e) from e


def _copy_stream(src: BinaryIO, dst: BinaryIO) -> None:
    """Copy the rest of `src` to `dst`. An open regular file is copied inside the kernel
    (copy_file_range), which makes storing a freshly built package several times faster
    than reading it through Python; anything else goes a chunk at a time."""
    # Only a plain file object: a wrapper that counts what is read (a progress bar) must
    # see every chunk go by.
    is_file = False
    if isinstance(src, (io.BufferedReader, io.FileIO)):
        try:
            fd = src.fileno()
            is_file = stat.S_ISREG(os.fstat(fd).st_mode)
        except (OSError, ValueError, io.UnsupportedOperation):
            pass
    if is_file:
        dst.flush()
        offset, out = src.tell(), dst.tell()
        remaining = os.fstat(fd).st_size - offset
        try:
            while remaining > 0:
                n = os.copy_file_range(fd, dst.fileno(), remaining, offset, out)
                if n == 0:
                    break
                offset, out, remaining = offset + n, out + n, remaining - n
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
        src.seek(offset)
        dst.seek(out)
    while chunk := src.read(CHUNK_SIZE):
        dst.write(chunk)


_FALLOC_FL_INSERT_RANGE = 0x20
_fallocate: list[Callable[[int, int, int, int], int] | None] = []  # found on first use


def _insert_range(fd: int, length: int) -> bool:
    """Insert `length` bytes (whole blocks) of hole at the start of the file, shifting its
    contents without copying them. False where the system or file system cannot."""
    if not _fallocate:
        import ctypes

        try:
            call = ctypes.CDLL(None, use_errno=True).fallocate
            call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            call.restype = ctypes.c_int
            _fallocate.append(call)
        except (OSError, AttributeError):  # not Linux
            _fallocate.append(None)
    fallocate = _fallocate[0]
    # Any failure (EOPNOTSUPP on tmpfs or btrfs, EINVAL for an empty file) leaves the file as it was.
    return fallocate is not None and fallocate(fd, _FALLOC_FL_INSERT_RANGE, 0, length) == 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
