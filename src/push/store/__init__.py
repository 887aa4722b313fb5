"""Open a store from its URL: file:///PATH or a plain path, gs://BUCKET[/PREFIX], s3://BUCKET[/PREFIX].

Used by every front end through `open_store(url)`; `default_store_url()` gives the
embedded local store used when neither --store nor PUSH_STORE is set.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from push.errors import InvalidStoreURL
from push.store.base import CHUNK_SIZE, ObjectInfo, Page, Reader, Store, check_key

__all__ = [
    "CHUNK_SIZE",
    "ObjectInfo",
    "Page",
    "Reader",
    "Store",
    "check_key",
    "default_store_url",
    "open_store",
]


def default_store_url() -> str:
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(data_home) / "push")


def open_store(url: str | None = None) -> Store:
    """The store named by `url`, else PUSH_STORE, else the default local directory."""
    url = url or os.environ.get("PUSH_STORE") or default_store_url()
    scheme = re.match(r"(gs|s3|file):/?(?!/)", url)
    if scheme is not None:  # "s3:/bucket", "gs:bucket": a typo, not a directory to create
        raise InvalidStoreURL(f"store URL {url!r} is missing a slash: use {scheme[1]}://…", url=url)
    if "://" not in url:
        from push.store.local import LocalStore

        return LocalStore(Path(url))
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise InvalidStoreURL(f"file store URL must be file:///PATH, got {url!r}")
        from push.store.local import LocalStore

        return LocalStore(Path(unquote(parsed.path)))
    if parsed.scheme in ("gs", "s3"):
        bucket = parsed.netloc
        prefix = parsed.path.strip("/")
        if not bucket:
            raise InvalidStoreURL(f"store URL {url!r} names no bucket")
        if parsed.scheme == "gs":
            from push.store.gcs import GCSStore

            return GCSStore(bucket, prefix)
        from push.store.s3 import S3Store

        return S3Store(bucket, prefix)
    raise InvalidStoreURL(
        f"unknown store scheme {parsed.scheme!r} in {url!r}: use file:///PATH, gs://BUCKET or s3://BUCKET"
    )
