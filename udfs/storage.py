"""Reading image bytes where they live: S3 (boto3) or a local / shared filesystem.

Executors call `read_bytes`; the driver lists with `s3_client` and `split_s3_uri` and fetches
weights with `download_to_file`. One boto3 client per Python worker and S3 settings (clients are
thread-safe and are shared by the worker's fetch threads), built with a single attempt: every
request, the reading of its body included, is retried by `udfs.s3_retry.with_retries`. An image
is one GET: its size comes from the listing or the answer's headers, not from a HEAD first.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlparse

import boto3
from botocore import UNSIGNED
from botocore.config import Config

from udfs.errors import ImageTooLarge
from udfs.s3_retry import RetryCounts, with_retries
from udfs.settings import S3Options

S3_SCHEMES = ("s3", "s3a", "s3n")
_client_lock = threading.Lock()


URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def is_local_uri(uri: str) -> bool:
    """A path on this machine's filesystem: a plain path or a `file:` URI, not `s3://`, `dbfs:/`,
    `hdfs://` ... (on a cluster a plain path may still name the cluster's default filesystem)."""
    return uri.startswith("file:") or not URI_SCHEME.match(uri)


def is_s3_uri(uri: str) -> bool:
    return uri.split("://", 1)[0].lower() in S3_SCHEMES if "://" in uri else False


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> (`bucket`, `some/prefix`).

    Split by hand, not with urlparse: keys may hold `#`, `?`, spaces and non-ASCII characters."""
    if not is_s3_uri(uri):
        raise ValueError(f"not an S3 URI: {uri!r}")
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    if not bucket:
        raise ValueError(f"S3 URI without a bucket: {uri!r}")
    return bucket, key


def local_path(uri: str) -> Path:
    """A local path from `/abs/path`, `relative/path` or `file:///abs/path`."""
    if uri.startswith("file:"):
        return Path(unquote(urlparse(uri).path))
    return Path(uri)


@lru_cache(maxsize=8)
def _cached_client(options: S3Options):
    config = Config(
        # one attempt: udfs.s3_retry retries (boto3's retry quota would starve a worker's threads)
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=options.connect_timeout_s,
        read_timeout=options.read_timeout_s,
        max_pool_connections=options.max_pool_connections,
        signature_version=UNSIGNED if options.anonymous else None,
    )
    session = boto3.session.Session()
    return session.client(
        "s3", endpoint_url=options.endpoint_url, region_name=options.region, config=config
    )


def s3_client(options: S3Options):
    """The worker's S3 client for these options (created once, then shared by threads)."""
    with _client_lock:
        return _cached_client(options)


def _get_object(options: S3Options, bucket: str, key: str, max_bytes: int) -> bytes:
    """One GET, body included (a body cut short raises here, inside the retried request)."""
    response = s3_client(options).get_object(Bucket=bucket, Key=key)
    body = response["Body"]
    try:
        if response.get("ContentLength", 0) > max_bytes:
            raise ImageTooLarge(f"{response['ContentLength']} bytes > limit of {max_bytes}")
        return body.read()
    finally:
        body.close()


def read_bytes(uri: str, options: S3Options, max_bytes: int, size_hint: int | None = None,
               counts: Optional[RetryCounts] = None) -> bytes:
    """The whole object at `uri`; raises `ImageTooLarge` past `max_bytes`. S3 reads are retried
    and counted in `counts`."""
    if size_hint is not None and size_hint > max_bytes:
        raise ImageTooLarge(f"{size_hint} bytes > limit of {max_bytes}")
    if is_s3_uri(uri):
        bucket, key = split_s3_uri(uri)
        data = with_retries(lambda: _get_object(options, bucket, key, max_bytes), options, counts, f"GET {uri}")
    else:
        path = local_path(uri)
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageTooLarge(f"{size} bytes > limit of {max_bytes}")
        data = path.read_bytes()
    if len(data) > max_bytes:
        raise ImageTooLarge(f"{len(data)} bytes > limit of {max_bytes}")
    return data


def download_to_file(uri: str, options: S3Options, target: Path) -> None:
    """The S3 object at `uri` streamed into `target` (a weights file: one GET, sent again whole
    when it fails transiently)."""
    bucket, key = split_s3_uri(uri)

    def download() -> None:
        body = s3_client(options).get_object(Bucket=bucket, Key=key)["Body"]
        try:
            with open(target, "wb") as handle:
                for chunk in body.iter_chunks(chunk_size=1 << 20):
                    handle.write(chunk)
        finally:
            body.close()

    with_retries(download, options, what=f"GET {uri}")
