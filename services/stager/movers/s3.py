"""The S3 mover: ``s3://host[:port]/bucket[/prefix]`` endpoints, through boto3.

Conventions chosen here:
- URL: ``s3://host:port/bucket/key``; the host is reached over plain HTTP, over HTTPS when
  ``S3_SECURE`` is 1/true/yes or the port is 443 (CA bundle: ``AWS_CA_BUNDLE`` or the system's).
  Path-style addressing (``http://host:port/bucket/key``), as on-site stores (Ceph RGW, MinIO,
  SeaweedFS) want. An endpoint URL cannot carry a query: the stager appends the file's path to it.
- Credentials: ``S3_ACCESS_KEY``/``S3_SECRET_KEY``, else ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
  (or anything else boto3 finds: profiles, instance roles), else anonymous (unsigned) requests.
  Region: ``S3_REGION``, else ``AWS_DEFAULT_REGION``, else us-east-1.
- Uploads go straight to the final key: S3 makes an object visible only once its upload is complete
  (PutObject, CompleteMultipartUpload), so no temporary name or rename is needed; a failed or
  cancelled multipart upload is aborted. Every part's ETag (the server's md5 of what it received) is
  compared with the md5 of what was sent before the upload is completed, and the object's ETag after;
  where the store's ETags are not md5s (SSE-KMS and the like) the object is re-read instead, and
  deleted if it does not match.
- boto3's own retries are off: the stager retries transient errors.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

from nodepilot.values import flag
from services.stager.movers.base import Reason, RemoteStat, Source, TransferError
from services.stager.movers.stream import StreamMover

PART_SIZE = 8 << 20  # S3 wants parts of at least 5 MiB but the last
MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "NotFound", "404"}
TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError", "Throttling",
                   "RequestTimeTooSkewed"}
_client_lock = threading.Lock()


def split(url: str) -> tuple[str, str, str]:
    """``s3://host:port/bucket/key`` -> (endpoint URL, bucket, key)."""
    parts = urlsplit(url)
    bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
    if not parts.hostname or not bucket:
        raise TransferError(Reason.PROTOCOL, f"not an s3://host[:port]/bucket/key URL: {url}")
    secure = flag(os.environ.get("S3_SECURE")) or parts.port == 443
    return f"{'https' if secure else 'http'}://{parts.netloc}", bucket, key


def client_for(endpoint: str) -> Any:
    access = os.environ.get("S3_ACCESS_KEY") or os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get("S3_SECRET_KEY") or os.environ.get("AWS_SECRET_ACCESS_KEY")
    region = os.environ.get("S3_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    with _client_lock:  # boto3 sessions are not thread-safe; its clients are
        return _client(endpoint, access, secret, region, os.environ.get("AWS_CA_BUNDLE"))


@functools.cache
def _client(endpoint: str, access: str | None, secret: str | None, region: str, ca_bundle: str | None) -> Any:
    import boto3
    import botocore
    from botocore.config import Config

    session = boto3.session.Session()
    anonymous = not (access and secret) and session.get_credentials() is None
    config = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=10,
                    read_timeout=StreamMover.call_timeout_s, s3={"addressing_style": "path"},
                    request_checksum_calculation="when_required", response_checksum_validation="when_required",
                    signature_version=botocore.UNSIGNED if anonymous else None)
    return session.client("s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=access or None,
                          aws_secret_access_key=secret or None, verify=ca_bundle or None, config=config)


class S3Mover(StreamMover):
    schemes = ("s3",)
    atomic_upload = True
    verification = "server md5 (ETag) of every part, or stored copy re-read where ETags are not md5s"

    def __init__(self) -> None:
        self._etag_checked = False  # the last upload was verified by ETags (a mover serves one transfer)

    @contextlib.contextmanager
    def open_source(self, url: str) -> Iterator[Source]:
        endpoint, bucket, key = split(url)
        reply = client_for(endpoint).get_object(Bucket=bucket, Key=key)
        body = reply["Body"]
        try:
            yield Source(reply.get("ContentLength"), body.iter_chunks(self.chunk_size))
        finally:
            body.close()

    def upload(self, url: str, chunks: Iterator[bytes], size: int) -> None:
        endpoint, bucket, key = split(url)
        client = client_for(endpoint)
        if size <= PART_SIZE:
            data = b"".join(chunks)
            etag = client.put_object(Bucket=bucket, Key=key, Body=data)["ETag"]
            self._etag_checked = _etag_matches(etag, hashlib.md5(data, usedforsecurity=False).hexdigest(), url)
            return
        upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        try:
            parts, digests, checked = [], [], True
            for number, data in enumerate(_parts(chunks), start=1):
                digest = hashlib.md5(data, usedforsecurity=False)
                etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                          Body=data)["ETag"]
                checked &= _etag_matches(etag, digest.hexdigest(), f"{url} part {number}")
                parts.append({"PartNumber": number, "ETag": etag})
                digests.append(digest.digest())
            etag = client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                                    MultipartUpload={"Parts": parts})["ETag"]
        except BaseException:
            with contextlib.suppress(Exception):
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise
        whole = f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(parts)}"
        self._etag_checked = checked and _etag_matches(etag, whole, url)

    def stored_adler32(self, url: str, cancel: threading.Event) -> str | None:
        return None if self._etag_checked else super().stored_adler32(url, cancel)

    def rename(self, src_url: str, dst_url: str) -> None:
        raise NotImplementedError("S3 uploads are atomic: nothing to rename")

    def remove(self, url: str) -> None:
        endpoint, bucket, key = split(url)
        client_for(endpoint).delete_object(Bucket=bucket, Key=key)

    def remote_stat(self, url: str) -> RemoteStat:
        endpoint, bucket, key = split(url)
        reply = client_for(endpoint).head_object(Bucket=bucket, Key=key)
        return RemoteStat(reply["ContentLength"], reply.get("Metadata", {}).get("adler32"))

    def classify(self, exc: Exception, what: str) -> TransferError:
        from botocore.exceptions import ClientError, HTTPClientError, ResponseStreamingError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        if isinstance(exc, ClientError):
            error, meta = exc.response.get("Error", {}), exc.response.get("ResponseMetadata", {})
            code, status = str(error.get("Code", "")), int(meta.get("HTTPStatusCode") or 0)
            diag = f"{what} failed: {status} {code} {error.get('Message', '')}".strip()
            if code in MISSING_CODES or status == 404:
                return TransferError(Reason.MISSING, diag)
            if status == 507 or code in ("QuotaExceeded", "XMinioStorageFull"):
                return TransferError(Reason.NOSPACE, diag)
            return TransferError(Reason.IO, diag, transient=status >= 500 or status == 429 or code in TRANSIENT_CODES)
        if isinstance(exc, BotoConnectionError | HTTPClientError | ResponseStreamingError):
            return TransferError(Reason.IO, f"{what} failed: {exc}", transient=True)
        return TransferError(Reason.IO, f"{what} failed: {exc!r}")


def _parts(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The chunks regrouped in parts of PART_SIZE (the last one shorter)."""
    part = bytearray()
    for chunk in chunks:
        part += chunk
        while len(part) >= PART_SIZE:
            yield bytes(part[:PART_SIZE])
            del part[:PART_SIZE]
    if part:
        yield bytes(part)


def _etag_matches(etag: str, expected: str, what: str) -> bool:
    """True when the ETag is the expected md5; False when it is no md5 (nothing to compare with);
    a different md5 is a corrupted transfer."""
    value = etag.strip('"').lower()
    body = value.partition("-")[0]
    if len(body) != 32 or any(c not in "0123456789abcdef" for c in body):
        return False
    if value != expected:
        raise TransferError(Reason.MD5, f"the stored copy of {what} differs from what was sent: "
                                            f"ETag {value}, md5 {expected}")
    return True
