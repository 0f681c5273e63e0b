"""Reading image bytes where they live: S3 (boto3) or a local / shared filesystem.

Executors call `read_bytes`; the driver only uses `s3_client` and `split_s3_uri` to list.
One boto3 client per Python worker and S3 settings (clients are thread-safe and are shared by
the worker's fetch threads). Retries are boto3's own (`retry_mode`, `max_attempts`); object
bodies are fetched with s3transfer's `download_fileobj`, which also retries a body that breaks
off mid-stream (as many times as `max_attempts`).
"""

from __future__ import annotations

import io
import re
import threading
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore import UNSIGNED
from botocore.config import Config

from udfs.errors import ImageTooLarge
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
        # total_max_attempts counts the first try; botocore's "max_attempts" key would count retries only
        retries={"mode": options.retry_mode, "total_max_attempts": options.max_attempts},
        connect_timeout=options.connect_timeout_s,
        read_timeout=options.read_timeout_s,
        max_pool_connections=options.max_pool_connections,
        signature_version=UNSIGNED if options.anonymous else None,
    )
    session = boto3.session.Session()
    return session.client(
        "s3", endpoint_url=options.endpoint_url, region_name=options.region, config=config
    )


@lru_cache(maxsize=8)
def _transfer_config(max_attempts: int) -> TransferConfig:
    """Images are small: one GET each, no multipart, no extra threads inside a fetch thread.
    A body that breaks off mid-stream is fetched again up to `--s3-max-attempts` times."""
    return TransferConfig(multipart_threshold=256 * 1024 * 1024, use_threads=False,
                          num_download_attempts=max_attempts)


def s3_client(options: S3Options):
    """The worker's S3 client for these options (created once, then shared by threads)."""
    with _client_lock:
        return _cached_client(options)


def read_bytes(uri: str, options: S3Options, max_bytes: int, size_hint: int | None = None) -> bytes:
    """The whole object at `uri`; raises `ImageTooLarge` past `max_bytes`."""
    if size_hint is not None and size_hint > max_bytes:
        raise ImageTooLarge(f"{size_hint} bytes > limit of {max_bytes}")
    if is_s3_uri(uri):
        bucket, key = split_s3_uri(uri)
        buffer = io.BytesIO()
        s3_client(options).download_fileobj(bucket, key, buffer, Config=_transfer_config(options.max_attempts))
        data = buffer.getvalue()
    else:
        path = local_path(uri)
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageTooLarge(f"{size} bytes > limit of {max_bytes}")
        data = path.read_bytes()
    if len(data) > max_bytes:
        raise ImageTooLarge(f"{len(data)} bytes > limit of {max_bytes}")
    return data
