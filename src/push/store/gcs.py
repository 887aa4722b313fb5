"""The Google Cloud Storage backend (gs://BUCKET[/PREFIX]), on google-cloud-storage.

A generation is the GCS object generation. Conditional writes use GCS's own
ifGenerationMatch preconditions, so compare-and-swap holds however many writers there are.
Reads are pinned to the generation that was looked up, so contents and metadata agree.
"""

from __future__ import annotations

import base64
import io
import os
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import BinaryIO

import google.auth
import google.auth.exceptions
import google_crc32c
import requests
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
from google.cloud.storage.retry import DEFAULT_RETRY

from push.errors import Conflict, CorruptObject, NotFound, StoreError, StoreUnavailable
from push.store.base import CHUNK_SIZE, ObjectInfo, Page, Reader, Store, check_key, read_full

# Transient faults (connection refused, 429, 5xx) are retried for a few seconds only, so
# an unreachable bucket is reported promptly; the agent's own loop retries later anyway.
_RETRY = DEFAULT_RETRY.with_delay(initial=0.25, multiplier=2.0, maximum=2.0).with_timeout(5.0)
_TIMEOUT = (5.0, 60.0)  # connect, read (seconds)
_EMULATOR_PROJECT = "push-local"
_NO_BUCKET = "the specified bucket does not exist"  # GCS's message; fake-gcs-server says "Not Found"

_UNAVAILABLE = (
    gexc.Unauthorized,
    gexc.Forbidden,
    gexc.RetryError,
    gexc.ServerError,
    gexc.TooManyRequests,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    google.auth.exceptions.GoogleAuthError,
)
# Whatever else the client or the network may raise: an endpoint that is not GCS (its
# answer is no JSON), a connection dropped mid-body, a socket error.
_UNEXPECTED = (requests.exceptions.RequestException, ValueError, OSError)
# How often a whole-object read starts again when the object is replaced while it is read
# (an agent's report is rewritten often): a short random pause between tries keeps a
# reader from falling into step with a writer.
_GET_ATTEMPTS = 10
_GET_PAUSE = 0.005


def _make_client(bucket: str) -> storage.Client:
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        # Anonymous credentials: an emulator needs none, and looking for real ones could
        # probe the GCE metadata server.
        return storage.Client(project=_EMULATOR_PROJECT, credentials=AnonymousCredentials())
    try:
        credentials, project = google.auth.default(scopes=storage.Client.SCOPE)
        return storage.Client(project=project, credentials=credentials)
    except google.auth.exceptions.GoogleAuthError as e:
        raise StoreUnavailable(f"no Google credentials to reach gs://{bucket}: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "message", "") or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _reason(e: BaseException) -> str:
    """The gist of why a request failed, on one line: the last cause after retries,
    the OS's words for a failed connection."""
    if isinstance(e, gexc.RetryError) and e.cause is not None:
        return f"{_reason(e.cause)} (gave up retrying)"
    if isinstance(e, requests.exceptions.ConnectionError):
        m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(e))
        return m.group(1).strip() if m else "connection failed"
    return _first_line(e)


class _Rewindable(io.RawIOBase):
    """A forward-only stream made to look seekable to the resumable upload.

    The upload reads a chunk, sends it, and after a failed request seeks back to what the
    server has and sends again; keeping the last chunk read is enough for that, so any
    stream (a pipe, a generator) can be uploaded without holding more than one chunk.
    """

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest
        self._pos = 0
        self._replay = b""
        self._kept = b""
        self._kept_start = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            pos += self._pos
        elif whence != io.SEEK_SET or not self._kept_start <= pos <= self._pos:
            raise io.UnsupportedOperation("can only seek back within the last chunk read")
        self._replay = self._kept[pos - self._kept_start : self._pos - self._kept_start] + self._replay
        self._pos = pos
        return pos

    def read(self, size: int | None = -1) -> bytes:
        want = CHUNK_SIZE if size is None or size < 0 else size
        parts = [self._replay[:want]]
        self._replay = self._replay[want:]
        got = len(parts[0])
        while got < want:
            if self._head:
                piece, self._head = self._head[: want - got], self._head[want - got :]
            else:
                piece = self._rest.read(want - got)
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
        data = b"".join(parts)
        self._kept, self._kept_start = data, self._pos
        self._pos += len(data)
        return data


class _GCSReader(Reader):
    """Ranged downloads of one generation, a chunk at a time, checked against its CRC32C."""

    def __init__(self, store: GCSStore, blob: storage.Blob, info: ObjectInfo, crc32c: str | None) -> None:
        self.info = info
        self._store = store
        self._blob = blob
        self._expected_crc = crc32c
        self._crc = google_crc32c.Checksum()
        self._fetched = 0
        self._buf = b""
        self._off = 0

    def _fetch(self) -> None:
        start = self._fetched
        end = min(start + CHUNK_SIZE, self.info.size) - 1
        with self._store._errors(self.info.key, missing="generation"):
            data = self._blob.download_as_bytes(start=start, end=end, raw_download=True, checksum=None,
                                                retry=_RETRY, timeout=_TIMEOUT)
        key, url = self.info.key, self._store.url
        if len(data) != end - start + 1:
            raise StoreUnavailable(f"short read of {key} from {url}", store=url, key=key)
        self._fetched += len(data)
        self._crc.update(data)
        if (self._fetched == self.info.size and self._expected_crc is not None
                and base64.b64encode(self._crc.digest()).decode() != self._expected_crc):
            raise CorruptObject(f"{key} from {url} failed its CRC32C check", store=url, key=key)
        self._buf, self._off = self._buf[self._off :] + data, 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            while self._fetched < self.info.size:
                self._fetch()
        else:
            while len(self._buf) - self._off < size and self._fetched < self.info.size:
                self._fetch()
        end = len(self._buf) if size is None or size < 0 else self._off + size
        out = self._buf[self._off : end]
        self._off += len(out)
        return out

    def close(self) -> None:
        self._buf, self._off = b"", 0


class GCSStore(Store):
    lists_metadata = True

    def __init__(self, bucket: str, prefix: str = "") -> None:
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self._root = f"{self.prefix}/" if self.prefix else ""
        self.url = f"gs://{bucket}/{self.prefix}" if self.prefix else f"gs://{bucket}"
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        self._at = f" at {emulator}" if emulator else ""
        self._client = _make_client(bucket)
        self._bucket = self._client.bucket(bucket)

    # -- helpers -------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return self._root + check_key(key)

    def _info(self, blob: storage.Blob) -> ObjectInfo:
        return ObjectInfo(
            key=blob.name[len(self._root) :],
            generation=str(blob.generation),
            size=int(blob.size or 0),
            metadata=dict(blob.metadata or {}),
            updated=blob.updated,
        )

    @contextmanager
    def _errors(self, key: str, *, missing: str = "object") -> Iterator[None]:
        """Translate GCS faults into Push's errors, once, here.

        `missing` says what a 404 means for this call: "object" (NotFound), "bucket" (an
        upload or a listing, which only 404 when the bucket is missing) or "generation"
        (the generation being read was replaced or deleted meanwhile: Conflict).
        """
        try:
            yield
        except gexc.NotFound as e:
            if missing == "bucket" or _NO_BUCKET in str(e).lower():
                raise StoreUnavailable(f"GCS bucket {self.bucket_name} does not exist (using {key})",
                                       store=self.url, key=key) from None
            if missing == "generation":
                raise Conflict(f"{key} changed in {self.url} while it was being read", key=key) from None
            raise NotFound(f"{key} not found in {self.url}", key=key) from None
        except gexc.PreconditionFailed:
            raise Conflict(f"{key} in {self.url} was changed by someone else", key=key) from None
        except DataCorruption as e:
            raise CorruptObject(f"{key}: transfer to or from {self.url} failed its CRC32C check",
                                store=self.url, key=key) from e
        except InvalidResponse as e:
            raise StoreUnavailable(f"GCS bucket {self.bucket_name}{self._at} gave an unexpected answer for "
                                   f"{key}: {_first_line(e)}", store=self.url, key=key) from e
        except _UNAVAILABLE as e:
            raise StoreUnavailable(f"cannot use GCS bucket {self.bucket_name}{self._at} for {key}: {_reason(e)}",
                                   store=self.url, key=key) from e
        except gexc.GoogleAPICallError as e:
            raise StoreError(f"GCS refused an operation on {key} in {self.url}: {_first_line(e)}",
                             store=self.url, key=key) from e
        except _UNEXPECTED as e:
            raise StoreUnavailable(f"GCS bucket {self.bucket_name}{self._at} gave an unexpected answer for "
                                   f"{key}: {type(e).__name__}: {_first_line(e)}", store=self.url, key=key) from e

    def _get_blob(self, key: str, name: str) -> storage.Blob:
        with self._errors(key):
            blob = self._bucket.get_blob(name, retry=_RETRY, timeout=_TIMEOUT)
        if blob is None:
            raise NotFound(f"{key} not found in {self.url}", key=key)
        return blob

    # -- the Store interface ---------------------------------------------------------------

    def stat(self, key: str) -> ObjectInfo:
        return self._info(self._get_blob(key, self._name(key)))

    def open(self, key: str) -> Reader:
        blob = self._get_blob(key, self._name(key))
        pinned = self._bucket.blob(blob.name, generation=blob.generation)
        return _GCSReader(self, pinned, self._info(blob), blob.crc32c)

    def get(self, key: str, if_generation_not_match: str | None = None) -> tuple[bytes, ObjectInfo] | None:
        name = self._name(key)
        # Look first, then download exactly the generation looked at: when it is unchanged
        # this costs one metadata request and moves no contents at all (fake-gcs-server
        # ignores ifGenerationNotMatch on downloads, so a 304 alone could not promise that).
        for attempt in range(_GET_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0, _GET_PAUSE * attempt))
            blob = self._get_blob(key, name)
            if if_generation_not_match is not None and str(blob.generation) == if_generation_not_match:
                return None
            pinned = self._bucket.blob(name, generation=blob.generation)
            try:
                with self._errors(key, missing="generation"):
                    data = pinned.download_as_bytes(raw_download=True, checksum="crc32c",
                                                    retry=_RETRY, timeout=_TIMEOUT)
            except Conflict:
                continue  # replaced between the look and the download: look again, at the new one
            return data, self._info(blob)
        raise Conflict(f"{key} in {self.url} was replaced {_GET_ATTEMPTS} times while being read", key=key)

    def put(self, key: str, data: bytes | BinaryIO, metadata: dict[str, str] | None = None, *,
            if_generation_match: str | None = None, if_absent: bool = False,
            content_type: str = "application/octet-stream") -> ObjectInfo:
        name = self._name(key)
        if if_absent:
            condition: int | None = 0
        elif if_generation_match is not None:
            try:
                condition = int(if_generation_match)
            except ValueError:
                raise Conflict(f"{key}: {if_generation_match!r} is not a GCS generation", key=key) from None
        else:
            condition = None
        blob = self._bucket.blob(name, chunk_size=CHUNK_SIZE)
        blob.metadata = dict(metadata or {})
        if isinstance(data, (bytes, bytearray, memoryview)):
            stream: io.IOBase = io.BytesIO(bytes(data))
            size: int | None = len(data)
        else:
            # A stream that fits one chunk goes up in a single request; anything longer as
            # a resumable upload, one chunk in memory at a time.
            head = read_full(data, CHUNK_SIZE)
            if len(head) < CHUNK_SIZE:
                stream, size = io.BytesIO(head), len(head)
            else:
                stream, size = _Rewindable(head, data), None
        with self._errors(key, missing="bucket"):
            blob.upload_from_file(stream, size=size, content_type=content_type,
                                  if_generation_match=condition, retry=_RETRY, timeout=_TIMEOUT)
        return ObjectInfo(key=key, generation=str(blob.generation), size=int(blob.size or 0),
                          metadata=dict(blob.metadata or {}),
                          updated=blob.updated or datetime.now(timezone.utc))

    def list_page(self, prefix: str, token: str | None = None, page_size: int = 1000,
                  start_after: str | None = None) -> Page:
        # GCS's startOffset is inclusive; the key equal to start_after is dropped below.
        after = self._root + start_after if start_after else None
        with self._errors(prefix or "listing", missing="bucket"):
            iterator = self._client.list_blobs(
                self._bucket, prefix=self._root + prefix, page_size=page_size, page_token=token,
                start_offset=after, retry=_RETRY, timeout=_TIMEOUT,
            )
            page = next(iterator.pages, None)
            blobs = list(page) if page is not None else []
        items = [self._info(b) for b in blobs if b.name != after]
        return Page(items, iterator.next_page_token or None)

    def delete(self, key: str, *, if_generation_match: str | None = None) -> None:
        name = self._name(key)
        condition = None
        if if_generation_match is not None:
            try:
                condition = int(if_generation_match)
            except ValueError:
                raise Conflict(f"{key}: {if_generation_match!r} is not a GCS generation", key=key) from None
        with self._errors(key):
            self._bucket.delete_blob(name, if_generation_match=condition, retry=_RETRY, timeout=_TIMEOUT)

    def close(self) -> None:
        self._client.close()
