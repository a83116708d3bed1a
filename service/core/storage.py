"""Where a run's outputs are kept: a local directory (default) or an S3-compatible bucket.

Layout, the same in both backends::

    <root or s3://bucket/prefix>/runs/<run_id>/<kind>/<file name>

URIs are `file:///abs/path` for the local backend and `s3://bucket/key` for S3.
`put` returns (uri, bytes, sha256 hex) for the `artifacts` table; `open` reads
a stored file back as a stream and refuses any URI outside the store.

It lives in the service because both sides use it: the worker writes (`put`),
the API reads (`open`). Both build it from the same settings
(CADDIE_ARTIFACT_DIR, CADDIE_S3_*) with `make_artifact_store`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import unquote, urlparse

from service.core.settings import Settings

KINDS = ("model", "code", "log", "result", "metrics")
_CHUNK = 1 << 20
# S3 bucket naming rules: 3-63 chars of lowercase letters, digits, dots and hyphens
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


class ArtifactStoreError(Exception):
    """The store is misconfigured or unreachable, or a URI does not belong to it."""


class DiskFull(ArtifactStoreError):
    """No space (or quota) left on the disk a file was being written to; the message names the disk and the path."""


def mount_of(path: Path) -> Path:
    """The mount point (the disk) holding `path`."""
    path = Path(path).resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full(path: Path, exc: OSError) -> DiskFull:
    where = Path(path)
    try:
        free = f"{shutil.disk_usage(mount_of(where.parent)).free:,} bytes free"
    except OSError:
        free = "free space unknown"
    return DiskFull(f"disk full: no space left on {mount_of(where.parent)} writing {where} ({free}; {exc.strerror})")


class ArtifactOutsideStore(ArtifactStoreError):
    """A URI that does not point inside this store (another scheme, bucket or directory): never read."""


class ArtifactMissing(ArtifactStoreError):
    """The URI belongs to the store, but nothing is stored there (any more)."""


class ArtifactStore(Protocol):
    def put(self, run_id: int, kind: str, path: Path) -> tuple[str, int, str]: ...

    def open(self, uri: str) -> IO[bytes]: ...

    def delete(self, uri: str) -> None: ...


def artifact_key(run_id: int, kind: str, filename: str) -> str:
    """Relative key of one artifact: runs/<run_id>/<kind>/<file name>."""
    if kind not in KINDS:
        raise ArtifactStoreError(f"artifact kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if isinstance(run_id, bool) or not isinstance(run_id, int) or run_id < 0:
        raise ArtifactStoreError(f"run_id must be a non-negative integer; got {run_id!r}")
    name = _SAFE_NAME.sub("_", Path(filename).name).lstrip(".") or "file"
    return f"runs/{run_id}/{kind}/{name}"


def file_digest(path: Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file, read in chunks."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def read_chunks(stream: IO[bytes], chunk_bytes: int = _CHUNK) -> Iterator[bytes]:
    """The stream's bytes, ``chunk_bytes`` at a time (never the whole file in memory); closes it at the end."""
    try:
        while chunk := stream.read(chunk_bytes):
            yield chunk
    finally:
        stream.close()


class LocalArtifactStore:
    """Artifacts as files under one directory on this machine."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def put(self, run_id: int, kind: str, path: Path) -> tuple[str, int, str]:
        target = self.root / artifact_key(run_id, kind, Path(path).name)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)  # a reader never sees half a file
        except OSError as exc:
            tmp.unlink(missing_ok=True)  # a partial copy must not keep the disk full
            if is_disk_full(exc):
                raise disk_full(target, exc) from exc
            raise
        size, sha = file_digest(target)
        return target.as_uri(), size, sha

    def path_of(self, uri: str) -> Path:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise ArtifactOutsideStore(f"not a file:// artifact URI: {uri!r}")
        # resolve() first: '..' and symlinks must not lead out of the root.
        path = Path(unquote(parsed.path)).resolve()
        if parsed.netloc not in ("", "localhost") or not path.is_relative_to(self.root):
            raise ArtifactOutsideStore(f"artifact URI {uri!r} is outside the store at {self.root}")
        return path

    def delete(self, uri: str) -> None:
        """Remove an artifact (retention); one already gone is fine."""
        self.path_of(uri).unlink(missing_ok=True)

    def open(self, uri: str) -> IO[bytes]:
        path = self.path_of(uri)
        try:
            return open(path, "rb")
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ArtifactMissing(f"artifact {uri!r} does not exist") from exc
        except OSError as exc:
            raise ArtifactStoreError(f"cannot read {uri!r}: {exc}") from exc


class S3ArtifactStore:
    """Artifacts as objects in an S3-compatible bucket (AWS S3, MinIO, R2, ...), through boto3.

    Credentials come from boto3's usual chain (env vars, ~/.aws, instance role);
    they are never read or logged here.
    """

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str = "", client: Any = None) -> None:
        if not _BUCKET.match(bucket or "") or ".." in bucket:
            raise ArtifactStoreError(f"CADDIE_S3_BUCKET {bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, '.', '-')")
        if endpoint_url and urlparse(endpoint_url).scheme not in ("http", "https"):
            raise ArtifactStoreError(f"CADDIE_S3_ENDPOINT_URL must start with http:// or https://; got {endpoint_url!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or None
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3", endpoint_url=self.endpoint_url, config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60)
            )
        return self._client

    def key_for(self, run_id: int, kind: str, filename: str) -> str:
        key = artifact_key(run_id, kind, filename)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def split_uri(self, uri: str) -> str:
        """The object key of an s3:// URI of this store's bucket."""
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or parsed.netloc != self.bucket or not parsed.path.lstrip("/"):
            raise ArtifactOutsideStore(f"artifact URI {uri!r} is not an object of bucket {self.bucket!r}")
        return parsed.path.lstrip("/")

    def put(self, run_id: int, kind: str, path: Path) -> tuple[str, int, str]:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.key_for(run_id, kind, Path(path).name)
        size, sha = file_digest(Path(path))
        try:
            self.client.upload_file(str(path), self.bucket, key, ExtraArgs={"Metadata": {"sha256": sha}})
        except (Boto3Error, BotoCoreError, ClientError) as exc:  # S3UploadFailedError is a Boto3Error
            raise ArtifactStoreError(f"upload of {key!r} to bucket {self.bucket!r} failed: {exc}") from exc
        return self.uri_for(key), size, sha

    def delete(self, uri: str) -> None:
        """Remove an artifact (retention); S3 answers a missing key as deleted."""
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.split_uri(uri)
        if (self.prefix and not key.startswith(f"{self.prefix}/")) or ".." in key.split("/"):
            raise ArtifactOutsideStore(f"artifact URI {uri!r} is outside the prefix {self.prefix!r} of bucket {self.bucket!r}")
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise ArtifactStoreError(f"cannot delete {uri!r}: {exc}") from exc

    def open(self, uri: str) -> IO[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.split_uri(uri)
        # Only objects under this store's prefix: another tenant's keys in a shared bucket are not ours.
        if (self.prefix and not key.startswith(f"{self.prefix}/")) or ".." in key.split("/"):
            raise ArtifactOutsideStore(f"artifact URI {uri!r} is outside the prefix {self.prefix!r} of bucket {self.bucket!r}")
        try:
            # The body is a stream: bytes arrive as they are read, not all at once.
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise ArtifactMissing(f"artifact {uri!r} does not exist") from exc
            raise ArtifactStoreError(f"cannot read {uri!r}: {exc}") from exc
        except BotoCoreError as exc:
            raise ArtifactStoreError(f"cannot read {uri!r}: {exc}") from exc


def make_artifact_store(settings: Settings) -> ArtifactStore:
    """S3 when CADDIE_S3_BUCKET is set, else the local directory CADDIE_ARTIFACT_DIR."""
    if settings.s3_bucket:
        return S3ArtifactStore(settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url)
    assert settings.artifact_dir is not None  # filled in from home when the settings load
    return LocalArtifactStore(Path(settings.artifact_dir))
