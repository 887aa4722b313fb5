"""A store that counts the operations made through it, by kind, and passes them on.

The push server wraps its store in one (`push_store_operations` on /metrics) so that an
operator, and benchmarks/bench_agents.py, see what the push server costs the bucket: cloud
buckets bill per list and per read, and the bucket poll is most of it. Counting happens at
the Store API, so a list of 3 pages counts 3 `list` operations whatever the backend.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from push.store.base import ObjectInfo, Page, Reader, Store

# The kinds counted: what a cloud bucket bills as class A (list, put, delete) and B (stat, read).
OPERATIONS = ("list", "stat", "read", "put", "delete")


class CountingStore(Store):
    """Passes every call to `inner`, counting it (thread-safe)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url
        self.lists_metadata = inner.lists_metadata
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def _count(self, op: str) -> None:
        with self._lock:
            self._counts[op] += 1

    def counts(self) -> dict[str, int]:
        """Operations so far, by kind (every kind present, 0 if never made)."""
        with self._lock:
            return {op: self._counts[op] for op in OPERATIONS}

    def stat(self, key: str) -> ObjectInfo:
        self._count("stat")
        return self.inner.stat(key)

    def open(self, key: str) -> Reader:
        self._count("read")
        return self.inner.open(key)

    def get(self, key: str, if_generation_not_match: str | None = None) -> tuple[bytes, ObjectInfo] | None:
        # The inner store may make it one conditional read or a stat then a read: count
        # what it does through this store's own stat/open when it uses the base version.
        if type(self.inner).get is Store.get:
            return super().get(key, if_generation_not_match)
        self._count("read")
        return self.inner.get(key, if_generation_not_match)

    def put(self, key: str, data: bytes | BinaryIO, metadata: dict[str, str] | None = None, *,
            if_generation_match: str | None = None, if_absent: bool = False,
            content_type: str = "application/octet-stream") -> ObjectInfo:
        self._count("put")
        return self.inner.put(key, data, metadata, if_generation_match=if_generation_match, if_absent=if_absent,
                              content_type=content_type)

    def put_file(self, key: str, path: Path, metadata: dict[str, str] | None = None, *, if_absent: bool = False,
                 content_type: str = "application/octet-stream", adopt: bool = False) -> ObjectInfo:
        self._count("put")
        return self.inner.put_file(key, path, metadata, if_absent=if_absent, content_type=content_type, adopt=adopt)

    def adoption_dir(self) -> Path | None:
        return self.inner.adoption_dir()

    def list_page(self, prefix: str, token: str | None = None, page_size: int = 1000,
                  start_after: str | None = None) -> Page:
        self._count("list")
        return self.inner.list_page(prefix, token, page_size, start_after)

    def list_keys(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        # The inner store's own walk (the local store reads no object), counted as one listing.
        self._count("list")
        return self.inner.list_keys(prefix, start_after)

    def delete(self, key: str, *, if_generation_match: str | None = None) -> None:
        self._count("delete")
        self.inner.delete(key, if_generation_match=if_generation_match)

    def close(self) -> None:
        self.inner.close()
