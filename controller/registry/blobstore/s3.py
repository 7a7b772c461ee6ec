"""The S3 blob store: any S3-compatible service through boto3 (AWS, MinIO, Ceph, moto).

Keys are content-addressed, ``<prefix>/<sha[:2]>/<sha>``. A put streams the file to a temporary key while hashing
it (so what is stored is exactly what was hashed; boto3 switches to a multipart upload for big files), then
copies it to its final key and deletes the temporary one: a reader never sees a partial blob under a sha.
Agents download straight from presigned GET URLs, so the controller carries no artifact bytes.
Credentials come from boto3's default chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, roles).
"""

from __future__ import annotations

import hashlib
import io
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from controller.registry.blobstore.base import (
    BlobInfo,
    BlobRef,
    BlobStore,
    check_range,
    check_sha,
    not_found,
)
from shared.errors import NotFound, Unavailable

log = logging.getLogger(__name__)

TRANSFER = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20, max_concurrency=4)
_MISSING = {"404", "NoSuchKey", "NotFound"}


class _HashingReader:
    """A read-only stream over ``fh`` that hashes what it hands out (no ``seek``: boto3 reads it in order)."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data


class S3BlobStore(BlobStore):
    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "slmops/blobs",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
        connect_timeout_s: float = 5.0,
        attempts: int = 3,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        where = endpoint_url or "AWS"
        self.description = f"s3 store {where} bucket '{bucket}'"
        config = Config(
            connect_timeout=connect_timeout_s,
            read_timeout=60,
            retries={"max_attempts": attempts, "mode": "standard"},
            s3={"addressing_style": "path"} if endpoint_url else None,
            signature_version="s3v4",
        )
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)

    def key(self, sha: str) -> str:
        norm = check_sha(sha)
        return f"{self.prefix}/{norm[:2]}/{norm}" if self.prefix else f"{norm[:2]}/{norm}"

    def _fail(self, what: str, exc: Exception) -> NoReturn:
        raise Unavailable(f"{what}: the blob store ({self.description}) is unreachable or refused: {exc}") from exc

    def check_reachable(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            self._fail("cannot use the blob store", exc)

    # --- reading -------------------------------------------------------------------------------------------
    @contextmanager
    def _reading(self, what: str, sha: str) -> Iterator[None]:
        """A missing object is the blob store's NotFound; any other failure is Unavailable naming ``what``."""
        try:
            yield
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                raise not_found(check_sha(sha)) from None
            self._fail(f"{what} blob {sha[:12]}…", exc)
        except BotoCoreError as exc:
            self._fail(f"{what} blob {sha[:12]}…", exc)

    def stat(self, sha: str) -> BlobInfo:
        key = self.key(sha)
        with self._reading("stat of", sha):
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        return BlobInfo(int(head["ContentLength"]), head["LastModified"].timestamp())

    def open_range(self, sha: str, offset: int = 0, end: int | None = None) -> tuple[BinaryIO, int]:
        total = self.stat(sha).size
        stop = check_range(sha, offset, end, total)
        if stop <= offset:
            return io.BytesIO(b""), total
        with self._reading("reading", sha):
            obj = self.client.get_object(Bucket=self.bucket, Key=self.key(sha), Range=f"bytes={offset}-{stop - 1}")
        return obj["Body"], total

    def presign_get(self, sha: str, expires_s: int = 3600) -> str | None:
        return str(
            self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self.key(sha)}, ExpiresIn=int(expires_s)
            )
        )

    def iterate(self) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._root())
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"].rsplit("/", 1)[-1]
                    if len(name) == 64 and obj["Key"] == self.key_or_none(name):
                        yield name
        except (BotoCoreError, ClientError) as exc:
            self._fail("listing blobs", exc)

    def key_or_none(self, name: str) -> str | None:
        try:
            return self.key(name)
        except Exception:
            return None

    # --- writing -------------------------------------------------------------------------------------------
    def put_file(self, path: Path, *, link: bool = False) -> BlobRef:
        src = Path(path)
        if not src.is_file():
            raise NotFound(f"cannot add {src} to the blob store: not a regular file")
        with open(src, "rb") as fh:
            return self._put_stream(fh, str(src))

    def put_bytes(self, data: bytes) -> BlobRef:
        sha = hashlib.sha256(data).hexdigest()
        if self.exists(sha):
            return BlobRef(sha, len(data))
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key(sha), Body=data)
        except (BotoCoreError, ClientError) as exc:
            self._fail(f"storing blob {sha[:12]}…", exc)
        return BlobRef(sha, len(data))

    def _put_stream(self, fh: BinaryIO, what: str) -> BlobRef:
        tmp = f"{self._root()}tmp/{uuid.uuid4().hex}"
        reader = _HashingReader(fh)
        try:
            self.client.upload_fileobj(reader, self.bucket, tmp, Config=TRANSFER)
            sha = reader.digest.hexdigest()
            if not self.exists(sha):
                source = {"Bucket": self.bucket, "Key": tmp}
                self.client.copy(source, self.bucket, self.key(sha), Config=TRANSFER)
            self.client.delete_object(Bucket=self.bucket, Key=tmp)
        except (BotoCoreError, ClientError) as exc:
            self._fail(f"storing {what}", exc)
        log.debug("stored blob %s (%d bytes) from %s in %s", sha[:12], reader.size, what, self.description)
        return BlobRef(sha, reader.size)

    def delete(self, sha: str) -> bool:
        if not self.exists(sha):
            return False
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(sha))
        except (BotoCoreError, ClientError) as exc:
            self._fail(f"deleting blob {sha[:12]}…", exc)
        return True

    def _root(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""
