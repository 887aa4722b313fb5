"""The store interface every backend implements: objects with metadata and generations.

A generation is an opaque string that changes on every write of a key (a counter on the
local store, the object generation on GCS, the ETag on S3). Writes can be made
conditional on it, which is what makes compare-and-swap on server files possible.

The contract every backend keeps (tests/test_store_contract.py): only Push's errors leave
it. A missing object is NotFound, a failed precondition Conflict, a bad key InvalidKey,
and everything the client library or the operating system raises is StoreUnavailable (or
CorruptObject for a failed checksum), with the key in the message. Callers never need to
catch a client library's exceptions.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from push.errors import Conflict, InvalidKey, NotFound, StoreUnavailable

__all__ = [
    "CHUNK_SIZE",
    "Conflict",
    "NotFound",
    "ObjectInfo",
    "Page",
    "Reader",
    "Store",
    "StoreUnavailable",
    "check_key",
    "read_full",
]

CHUNK_SIZE = 8 * 1024 * 1024

# Keys are relative paths of printable characters: no empty segment, no "." or "..",
# nothing that could escape a prefix on a filesystem-backed store.
_BAD_KEY_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


def check_key(key: str) -> str:
    """Return `key` if it is a safe object key, else raise InvalidKey."""
    if not key or key.startswith("/") or key.endswith("/") or _BAD_KEY_CHARS.search(key):
        raise InvalidKey(f"invalid object key {key!r}", key=key)
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidKey(f"invalid object key {key!r}", key=key)
    return key


def read_full(stream: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes; fewer only at the end of the stream."""
    parts: list[bytes] = []
    got = 0
    while got < size:
        piece = stream.read(size - got)
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows of one object, without its contents."""

    key: str
    generation: str
    size: int
    metadata: dict[str, str] = field(default_factory=dict)
    updated: datetime | None = None
    # Why the object cannot be read (a local file with a damaged header), when a listing
    # found it so: one bad object is listed as such, never fails the whole listing.
    damaged: str | None = None


@dataclass(frozen=True)
class Page:
    """One page of a listing; pass `next_token` back to get the next one."""

    items: list[ObjectInfo]
    next_token: str | None


class Reader(abc.ABC):
    """A streaming read of one object at one generation. Use as a context manager."""

    info: ObjectInfo

    @abc.abstractmethod
    def read(self, size: int = -1) -> bytes: ...

    def close(self) -> None:  # noqa: B027 - optional for backends with nothing to free
        pass

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(CHUNK_SIZE):
            yield chunk


class Store(abc.ABC):
    """An object store: local directory, GCS bucket or S3 bucket, under an optional prefix."""

    url: str
    # Whether list pages carry each object's custom metadata (GCS does; S3 does not).
    lists_metadata: bool = False
    # Whether a listing reads every object to fill in its metadata and generation (the local
    # store keeps them in each object's file): a caller that needs only the keys calls list_keys.
    listing_reads_objects: bool = False

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size, generation and metadata of `key`; NotFound if absent."""

    @abc.abstractmethod
    def open(self, key: str) -> Reader:
        """Start a streaming read of `key`; NotFound if absent."""

    def get(self, key: str, if_generation_not_match: str | None = None) -> tuple[bytes, ObjectInfo] | None:
        """Read a small object whole, with the generation of exactly those bytes. Returns
        None, downloading nothing, when its generation still equals `if_generation_not_match`.
        An object replaced while it is read is read again (a reader of a report that is
        rewritten often never fails for that), a few times at most."""
        if if_generation_not_match is not None:
            info = self.stat(key)
            if info.generation == if_generation_not_match:
                return None
        with self.open(key) as reader:
            return reader.read(), reader.info

    @abc.abstractmethod
    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        metadata: dict[str, str] | None = None,
        *,
        if_generation_match: str | None = None,
        if_absent: bool = False,
        content_type: str = "application/octet-stream",
    ) -> ObjectInfo:
        """Write `key` from bytes or a binary stream, atomically.

        With `if_absent` the write happens only if the key does not exist; with
        `if_generation_match` only if its generation is still that one. Otherwise the
        write raises Conflict and nothing changes.
        """

    def put_file(self, key: str, path: Path, metadata: dict[str, str] | None = None, *, if_absent: bool = False,
                 content_type: str = "application/octet-stream", adopt: bool = False) -> ObjectInfo:
        """Write `key` from the file at `path`, as `put` does (streamed; create-only with `if_absent`).

        With `adopt` the caller hands the file over: a store that can make the file itself the
        object does so instead of copying it (the local store, for a file in `adoption_dir()`),
        and the caller must not use `path` afterwards, whatever the outcome. Other stores upload
        it as `put` would.
        """
        with open(path, "rb") as f:
            return self.put(key, f, metadata, if_absent=if_absent, content_type=content_type)

    def adoption_dir(self) -> Path | None:
        """Where to write a file that `put_file(..., adopt=True)` can take without copying; None
        when the store has no such place (a cloud bucket)."""
        return None

    @abc.abstractmethod
    def list_page(self, prefix: str, token: str | None = None, page_size: int = 1000,
                  start_after: str | None = None) -> Page:
        """One page of objects whose key starts with `prefix`, in key order."""

    def list(self, prefix: str, page_size: int = 1000, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Every object under `prefix`, fetched a page at a time."""
        token: str | None = None
        while True:
            page = self.list_page(prefix, token, page_size, start_after)
            yield from page.items
            if page.next_token is None:
                return
            token = page.next_token

    def list_keys(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        """Every key under `prefix`, in key order, reading no object where the store can help
        it (the local store walks its directories); elsewhere the keys of `list`."""
        for info in self.list(prefix, start_after=start_after):
            yield info.key

    @abc.abstractmethod
    def delete(self, key: str, *, if_generation_match: str | None = None) -> None:
        """Delete `key`; NotFound if absent, Conflict if the generation moved on."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"
