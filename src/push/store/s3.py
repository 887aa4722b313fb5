"""The S3 backend (s3://BUCKET[/PREFIX]), on boto3, for AWS or any S3-compatible service.

A generation is the object's ETag, without its quotes; conditional writes use S3's
If-Match / If-None-Match. The endpoint comes from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL,
credentials and region from the usual AWS chain.

Two things differ from GCS and the local store: an ETag identifies contents, so rewriting
identical bytes (even with other metadata) keeps the generation; and S3 lower-cases
metadata names. Metadata values that are not printable ASCII are stored RFC 2047-encoded
(as S3 itself does) and decoded on the way back.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from push.errors import Conflict, NotFound, PushError, StoreError, StoreUnavailable
from push.store.base import CHUNK_SIZE, ObjectInfo, Page, Reader, Store, check_key, read_full

# A few quick retries and short connect timeouts: an unreachable endpoint is reported in
# seconds, not after botocore's default minutes of backoff.
_CONFIG = Config(
    connect_timeout=3,
    read_timeout=60,
    retries={"max_attempts": 3, "mode": "standard"},
)

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_CONFLICT = {"412", "PreconditionFailed", "ConditionalRequestConflict"}
_REFUSED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
            "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled"}
_UNAVAILABLE = (BotoConnectionError, NoCredentialsError, PartialCredentialsError,
                CredentialRetrievalError, NoRegionError)

_ENCODED = re.compile(r"^=\?utf-8\?b\?([A-Za-z0-9+/=]*)\?=$", re.IGNORECASE)


_session: boto3.session.Session | None = None
_session_lock = threading.Lock()


def _client(endpoint: str | None) -> Any:
    """An S3 client from one boto3 session shared by every store: a new session loads
    botocore's service models again (a tenth of a second or more), a warm one makes a
    client in milliseconds. Sessions are not thread-safe, so clients are made under a lock."""
    global _session
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client("s3", endpoint_url=endpoint, config=_CONFIG)


def _encode_value(value: str) -> str:
    if value.isascii() and value.isprintable() and not _ENCODED.match(value):
        return value
    return f"=?UTF-8?B?{base64.b64encode(value.encode()).decode()}?="


def _decode_value(value: str) -> str:
    m = _ENCODED.match(value)
    if not m:
        return value
    try:
        return base64.b64decode(m.group(1)).decode()
    except ValueError:
        return value


def _generation(etag: str) -> str:
    return etag.strip('"')


def _quoted(generation: str) -> str:
    return f'"{generation.strip(chr(34))}"'


class _S3Reader(Reader):
    def __init__(self, store: S3Store, body: Any, info: ObjectInfo) -> None:
        self.info = info
        self._store = store
        self._body = body

    def read(self, size: int = -1) -> bytes:
        try:
            data: bytes = self._body.read(None if size is None or size < 0 else size)
            return data
        except (BotoCoreError, OSError) as e:
            raise StoreUnavailable(f"reading {self.info.key} from {self._store.url} failed: {e}",
                                   store=self._store.url, key=self.info.key) from e

    def close(self) -> None:
        self._body.close()


class S3Store(Store):
    lists_metadata = False  # ListObjectsV2 carries no user metadata

    def __init__(self, bucket: str, prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._root = f"{self.prefix}/" if self.prefix else ""
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        # Read the standard variables ourselves so the endpoint never depends on the
        # botocore version or on a shared config file.
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        self.endpoint = endpoint
        try:
            self._s3 = _client(endpoint)
        except (BotoCoreError, ValueError) as e:
            raise StoreUnavailable(f"cannot set up S3 for {self.url}: {e}") from e

    # -- helpers -------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return self._root + check_key(key)

    def _where(self) -> str:
        return f"S3 bucket {self.bucket}" + (f" at {self.endpoint}" if self.endpoint else "")

    def _error(self, e: Exception, key: str) -> PushError:
        """Translate an S3 fault into Push's errors, once, here."""
        url = self.url
        if isinstance(e, ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            message = err.get("Message") or code
            if code == "NoSuchBucket":
                return StoreUnavailable(f"{self._where()} does not exist (using {key})", store=url, key=key)
            if code in _NOT_FOUND:
                return NotFound(f"{key} not found in {url}", key=key)
            if code in _CONFLICT or status == 412:
                return Conflict(f"{key} in {url} was changed by someone else", key=key)
            if code in _REFUSED or status in (401, 403):
                return StoreUnavailable(f"{self._where()} refused our credentials for {key}: {message}",
                                        store=url, key=key)
            if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
                return StoreUnavailable(f"{self._where()} is unavailable ({key}): {message}", store=url, key=key)
            return StoreError(f"S3 refused an operation on {key} in {url}: {message}", store=url, key=key)
        if isinstance(e, _UNAVAILABLE):
            return StoreUnavailable(f"cannot reach {self._where()} for {key}: {e}", store=url, key=key)
        return StoreUnavailable(f"S3 operation on {key} in {url} failed: {e}", store=url, key=key)

    def _generation_of(self, key: str, response: dict[str, Any]) -> str:
        etag = response.get("ETag")
        if not isinstance(etag, str) or not etag:
            raise StoreUnavailable(f"{self._where()} gave an unexpected answer for {key} (no ETag): "
                                   "is the endpoint S3?", store=self.url, key=key)
        return _generation(etag)

    def _info(self, key: str, response: dict[str, Any]) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            generation=self._generation_of(key, response),
            size=int(response.get("ContentLength", 0)),
            metadata={k: _decode_value(v) for k, v in (response.get("Metadata") or {}).items()},
            updated=response.get("LastModified"),
        )

    def _conditions(self, if_generation_match: str | None, if_absent: bool) -> dict[str, str]:
        if if_absent:
            return {"IfNoneMatch": "*"}
        if if_generation_match is not None:
            return {"IfMatch": _quoted(if_generation_match)}
        return {}

    # -- the Store interface ---------------------------------------------------------------

    def stat(self, key: str) -> ObjectInfo:
        name = self._name(key)
        try:
            return self._info(key, self._s3.head_object(Bucket=self.bucket, Key=name))
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, key) from e

    def open(self, key: str) -> Reader:
        # One GetObject: its headers describe exactly the version its body streams, so the
        # reader is pinned to one generation without a separate look first.
        name = self._name(key)
        try:
            response = self._s3.get_object(Bucket=self.bucket, Key=name)
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, key) from e
        return _S3Reader(self, response["Body"], self._info(key, response))

    def get(self, key: str, if_generation_not_match: str | None = None) -> tuple[bytes, ObjectInfo] | None:
        name = self._name(key)
        extra = {"IfNoneMatch": _quoted(if_generation_not_match)} if if_generation_not_match else {}
        try:
            response = self._s3.get_object(Bucket=self.bucket, Key=name, **extra)
        except ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 304:
                return None  # unchanged: S3 sent no body
            raise self._error(e, key) from e
        except BotoCoreError as e:
            raise self._error(e, key) from e
        with _S3Reader(self, response["Body"], self._info(key, response)) as reader:
            return reader.read(), reader.info

    def put(self, key: str, data: bytes | BinaryIO, metadata: dict[str, str] | None = None, *,
            if_generation_match: str | None = None, if_absent: bool = False,
            content_type: str = "application/octet-stream") -> ObjectInfo:
        name = self._name(key)
        meta = dict(metadata or {})
        common = {"Bucket": self.bucket, "Key": name}
        conditions = self._conditions(if_generation_match, if_absent)
        s3_meta = {k: _encode_value(v) for k, v in meta.items()}
        if isinstance(data, (bytes, bytearray, memoryview)):
            head, second = bytes(data), b""
        else:
            head = read_full(data, CHUNK_SIZE)
            second = read_full(data, CHUNK_SIZE) if len(head) == CHUNK_SIZE else b""
        try:
            if not second:
                response = self._s3.put_object(Body=head, Metadata=s3_meta, ContentType=content_type,
                                               **common, **conditions)
                size = len(head)
            else:
                response, size = self._put_multipart(common, conditions, s3_meta, content_type,
                                                     (head, second), data)  # type: ignore[arg-type]
        except (ClientError, BotoCoreError) as e:
            error = self._error(e, key)
            if isinstance(error, NotFound) and if_generation_match is not None:
                error = Conflict(f"{key} in {self.url} was deleted by someone else", key=key)
            raise error from e
        return ObjectInfo(key=key, generation=self._generation_of(key, response), size=size,
                          metadata=meta, updated=datetime.now(timezone.utc))

    def _put_multipart(self, common: dict[str, str], conditions: dict[str, str], s3_meta: dict[str, str],
                       content_type: str, first: tuple[bytes, bytes], rest: BinaryIO) -> tuple[dict[str, Any], int]:
        upload_id = self._s3.create_multipart_upload(Metadata=s3_meta, ContentType=content_type,
                                                     ChecksumAlgorithm="CRC32", **common)["UploadId"]
        try:
            parts = []
            size = 0
            chunk_iter = _chunks(first, rest)
            for number, chunk in enumerate(chunk_iter, start=1):
                r = self._s3.upload_part(Body=chunk, PartNumber=number, UploadId=upload_id,
                                         ChecksumAlgorithm="CRC32", **common)
                part = {"ETag": r["ETag"], "PartNumber": number}
                if "ChecksumCRC32" in r:
                    part["ChecksumCRC32"] = r["ChecksumCRC32"]
                parts.append(part)
                size += len(chunk)
            response = self._s3.complete_multipart_upload(
                UploadId=upload_id, MultipartUpload={"Parts": parts}, **common, **conditions)
        except BaseException:
            # Nothing half-written may remain: drop the parts whatever went wrong.
            with contextlib.suppress(ClientError, BotoCoreError):
                self._s3.abort_multipart_upload(UploadId=upload_id, **common)
            raise
        return response, size

    def list_page(self, prefix: str, token: str | None = None, page_size: int = 1000,
                  start_after: str | None = None) -> Page:
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._root + prefix, "MaxKeys": page_size}
        if token:
            args["ContinuationToken"] = token
        elif start_after:
            args["StartAfter"] = self._root + start_after
        try:
            response = self._s3.list_objects_v2(**args)
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, prefix or "listing") from e
        items = [
            ObjectInfo(key=o["Key"][len(self._root):], generation=_generation(o["ETag"]),
                       size=int(o["Size"]), metadata={}, updated=o.get("LastModified"))
            for o in response.get("Contents", [])
        ]
        next_token = response.get("NextContinuationToken") if response.get("IsTruncated") else None
        return Page(items, next_token)

    def delete(self, key: str, *, if_generation_match: str | None = None) -> None:
        name = self._name(key)
        try:
            if if_generation_match is None:
                # S3 deletes a missing key without complaint; Push reports it.
                self._s3.head_object(Bucket=self.bucket, Key=name)
                self._s3.delete_object(Bucket=self.bucket, Key=name)
            else:
                self._s3.delete_object(Bucket=self.bucket, Key=name, IfMatch=_quoted(if_generation_match))
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, key) from e

    def close(self) -> None:
        self._s3.close()


def _chunks(first: tuple[bytes, bytes], rest: BinaryIO) -> Iterator[bytes]:
    yield from first
    while chunk := read_full(rest, CHUNK_SIZE):
        yield chunk
