"""Listing the input on the driver: S3 prefix or local folder -> one row per image.

Only keys and sizes are listed here (boto3 list_objects_v2, page by page under the job's retry
policy, top-level prefixes listed in parallel; `os.scandir` recursion locally); image bytes are
read later on the executors.
Truth comes from the parent folder name (`<wnid>-<Breed>`, or any other name, given a wnid by
`--label-map`); which of the model's classes it is, by wnid else by exact name, is
`udfs.labels.ClassNames.truth_index`'s to say. Objects whose extension is not an image
extension are skipped and counted: the summary reports them (`skipped_non_image`), so a prefix
that also holds annotations or CSVs is scored cleanly. Content, not extension, decides how an
image is decoded.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Optional

import pandas as pd
from botocore.exceptions import BotoCoreError, ClientError

from udfs.errors import S3RetriesExhausted, error_message
from udfs.labels import WNID, ClassNames, truth_from_folder
from udfs.s3_retry import RetryCounts, with_retries
from udfs.schema import IMAGES_SCHEMA
from udfs.settings import S3Options, Settings
from udfs.storage import is_local_uri, is_s3_uri, local_path, s3_client, split_s3_uri

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
LISTING_THREADS = 16
LIST_PAGE_SIZE = 1000  # keys per ListObjectsV2 page (S3's most)


class ListingError(Exception):
    """The input cannot be listed or holds no images (exit code 2)."""


@dataclass(frozen=True)
class Listing:
    images: pd.DataFrame  # columns of IMAGES_SCHEMA, sorted by path
    skipped_non_image: int
    total_images: int  # before --limit
    skipped_in_output: int = 0  # files of OUTPUT when it lies inside INPUT
    skipped_bad_name: int = 0  # image files whose local names are not UTF-8
    s3_retries: Optional[dict[str, int]] = None  # an S3 listing's RetryCounts.as_dict() (pages, not images)


def list_images(settings: Settings) -> Listing:
    if is_s3_uri(settings.input):
        retries = RetryCounts()
        listing = _list_images(list_s3(settings.input, settings.s3, retries), settings)
        return replace(listing, s3_retries=retries.as_dict())
    return _list_images(list_local(settings.input), settings)


def _list_images(entries: Iterable[tuple[str, Optional[int]]], settings: Settings) -> Listing:
    label_map = read_label_map(settings.label_map) if settings.label_map else None
    inside = output_inside_input(settings.input, settings.output)
    if inside is None:
        return build_listing(entries, label_map, settings.limit)
    left_out = 0

    def outside_output() -> Iterator[tuple[str, Optional[int]]]:  # filtered as listed, not copied
        nonlocal left_out
        for path, size in entries:
            if location(path, resolve=False).startswith(inside):
                left_out += 1
            else:
                yield path, size

    listing = build_listing(outside_output(), label_map, settings.limit)
    if left_out:
        log.info("left out %d file(s) under --output %s, which lies inside --input", left_out, settings.output)
    return replace(listing, skipped_in_output=left_out)


def left_out_text(non_image: int, in_output: int = 0, bad_name: int = 0) -> str:
    """What the listing left out, as the summary and the dry run print it."""
    return (f"{non_image:,} non-image objects skipped"
            + (f", {in_output:,} files of the output inside the input left out" if in_output else "")
            + (f", {bad_name:,} images with names that are not UTF-8 left out" if bad_name else ""))


def retried_text(requests: int, objects: int, noun: str, throttled: int) -> str:
    """`37 requests retried for 30 images (12 throttling answers)`: udfs.s3_retry's counts, as the
    summary and the dry run print them."""
    return f"{requests:,} requests retried for {objects:,} {noun} ({throttled:,} throttling answers)"


def location(uri: str, resolve: bool = True) -> str:
    """What a path or URI points at, scheme aside: `bucket/key` for S3 (s3, s3a, s3n name the
    same object), the absolute path for a local one (resolved, unless it comes from `list_local`,
    whose paths are absolute below the resolved input folder already)."""
    if is_s3_uri(uri):
        bucket, key = split_s3_uri(uri)
        return f"{bucket}/{key}"
    return str(local_path(uri).resolve()) if resolve else uri


def output_inside_input(input_uri: str, output_uri: str) -> Optional[str]:
    """`location(OUTPUT) + "/"` when OUTPUT lies inside INPUT, else None. Then a run's own files
    (its Parquet, its charts) would be listed as input by the next run into the same OUTPUT, and
    `--mode overwrite` would delete some of them after the listing: they are left out."""
    both_s3 = is_s3_uri(input_uri) and is_s3_uri(output_uri)
    both_local = not is_s3_uri(input_uri) and is_local_uri(output_uri)
    if not (both_s3 or both_local):
        return None
    inner = location(output_uri).rstrip("/") + "/"
    return inner if inner.startswith(location(input_uri).rstrip("/") + "/") else None


def build_listing(
    entries: Iterable[tuple[str, int]], label_map: Optional[dict[str, str]] = None, limit: Optional[int] = None
) -> Listing:
    """(path, size) pairs -> the images table (truth parsed from folder names).

    Built column by column, with one (wnid, label) pair of strings per folder rather than per
    image: the table is the listing's one full copy on the driver."""
    paths, image_ids, wnids, labels, sizes = [], [], [], [], []
    truth: dict[str, tuple[Optional[str], str]] = {}
    skipped, bad_names = 0, []
    for path, size in entries:
        pure = PurePosixPath(path)
        if pure.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped += 1
            continue
        if not is_utf8(path):
            bad_names.append(path)
            continue
        folder = pure.parent.name
        if folder not in truth:
            wnid, label = truth_from_folder(folder)
            if wnid is None and label_map is not None:
                wnid = label_map.get(label)
            truth[folder] = wnid, label
        wnid, label = truth[folder]
        paths.append(path)
        image_ids.append(pure.stem)
        wnids.append(wnid)
        labels.append(label)
        sizes.append(size)
    if bad_names:
        log.warning("left out %d image file(s) whose names are not UTF-8 (Spark's strings cannot carry them; "
                    "rename them to score them): %s", len(bad_names),
                    ", ".join(repr(os.fsencode(name)) for name in bad_names[:3]))
    if not paths:
        raise ListingError(f"no images found ({skipped} other objects skipped)")
    sizes = pd.array(sizes, dtype="Int64")  # a dangling link has none
    images = pd.DataFrame(dict(zip(IMAGES_SCHEMA.fieldNames(), (paths, image_ids, wnids, labels, sizes))))
    images = images.sort_values("path", ignore_index=True)
    total = len(images)
    if limit is not None:
        images = images.head(limit).reset_index(drop=True)
    return Listing(images=images, skipped_non_image=skipped, total_images=total, skipped_bad_name=len(bad_names))


def is_utf8(path: str) -> bool:
    """False for a local name that is not valid UTF-8 (Python holds its bytes as surrogates)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_label_map(path: str) -> dict[str, str]:
    """CSV `label,wnid` -> {label: wnid}; every wnid a WordNet id (`n02123045`), not a name."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"label", "wnid"} <= set(reader.fieldnames):
            raise ListingError(f"label map {path} needs the columns label,wnid")
        mapping = {row["label"]: (row["wnid"] or "").strip() for row in reader}
    wrong = sorted({wnid for wnid in mapping.values() if not WNID.fullmatch(wnid)})
    if wrong:
        raise ListingError(f"label map {path}: {', '.join(map(repr, wrong[:5]))} "
                           f"{'is not a WordNet id' if len(wrong) == 1 else 'are not WordNet ids'} "
                           "(n followed by 8 digits, e.g. n02123045 for tabby cat)")
    return mapping


def list_local(root: str) -> Iterator[tuple[str, Optional[int]]]:
    """Absolute paths and sizes of every file under `root`.

    Symlinked folders are followed (a dataset linked in class by class keeps its class names:
    paths go through the link), each real folder once, so a link back up the tree is no loop
    (folders are walked in name order, so which name a folder reached twice is listed under does
    not depend on the filesystem's order). A link to nothing is listed with no size: an image
    name becomes a `not_found` error row at scoring, as a file deleted after the listing would,
    instead of vanishing uncounted."""
    base = local_path(root)
    if not base.is_dir():
        raise ListingError(f"input folder not found: {root}")
    stack = [base.resolve()]
    seen = {os.path.realpath(stack[0])}
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        subfolders = []
        for entry in entries:
            if entry.is_dir():
                real = os.path.realpath(entry.path)
                if real not in seen:
                    seen.add(real)
                    subfolders.append(Path(entry.path))
            elif entry.is_file():
                yield entry.path, entry.stat().st_size
            elif entry.is_symlink() and not os.path.exists(entry.path):
                yield entry.path, None
        stack.extend(reversed(subfolders))  # the first name is walked first


def list_s3(uri: str, options: S3Options, counts: Optional[RetryCounts] = None) -> Iterator[tuple[str, int]]:
    """Every object under the prefix, as `s3://bucket/key` URIs with sizes, yielded as listed.

    The first level below the prefix is listed with a delimiter (here, before this returns: a
    missing bucket or a refused listing fails at once), then each sub-prefix (for Stanford Dogs:
    each breed folder) is paginated in its own thread and handed on prefix by prefix, in order:
    a prefix's keys are dropped once the images table has taken them, instead of being held
    twice more as lists of keys and of URIs. With `build_listing` sharing each folder's truth,
    300,000 keys peaked at 94 MiB of Python objects for a 65 MiB table (167 for 98 before;
    tests/test_listing.py holds it under 1.5x at 60,000). Every page is retried as
    `udfs.s3_retry` says and counted in `counts`; a page still failing fails the listing.
    """
    bucket, prefix = split_s3_uri(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    scheme = uri.split("://", 1)[0]
    with listing_errors(uri):
        top_objects, sub_prefixes = _list_level(options, counts, bucket, prefix)

    def objects() -> Iterator[tuple[str, int]]:
        with listing_errors(uri), ThreadPoolExecutor(max_workers=LISTING_THREADS) as pool:
            nested = pool.map(lambda sub: list(_list_all(options, counts, bucket, sub)), sub_prefixes)
            for chunk in itertools.chain([top_objects], nested):
                for key, size in chunk:
                    yield f"{scheme}://{bucket}/{key}", size

    return objects()


@contextlib.contextmanager
def listing_errors(uri: str) -> Iterator[None]:
    """boto3's errors while listing -> ListingError (one line, exit code 2)."""
    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise ListingError(f"cannot list {uri}: {code or exc}") from exc
    except (BotoCoreError, S3RetriesExhausted) as exc:
        raise ListingError(f"cannot list {uri}: {error_message(exc)}") from exc


def _pages(options: S3Options, counts: Optional[RetryCounts], **params) -> Iterator[dict]:
    """ListObjectsV2 pages, each one retried on its own (a throttled page is sent again, never
    taken as the end of the listing)."""
    client = s3_client(options)
    token: Optional[str] = None
    while True:
        page_params = {**params, "MaxKeys": LIST_PAGE_SIZE, **({"ContinuationToken": token} if token else {})}
        page = with_retries(lambda: client.list_objects_v2(**page_params), options, counts,
                            f"listing s3://{params['Bucket']}/{params['Prefix']}")
        yield page
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return


def _list_level(options: S3Options, counts: Optional[RetryCounts], bucket: str,
                prefix: str) -> tuple[list[tuple[str, int]], list[str]]:
    objects, prefixes = [], []
    for page in _pages(options, counts, Bucket=bucket, Prefix=prefix, Delimiter="/"):
        objects.extend((item["Key"], item["Size"]) for item in page.get("Contents", []))
        prefixes.extend(item["Prefix"] for item in page.get("CommonPrefixes", []))
    return objects, prefixes


def _list_all(options: S3Options, counts: Optional[RetryCounts], bucket: str,
              prefix: str) -> Iterator[tuple[str, int]]:
    for page in _pages(options, counts, Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if not item["Key"].endswith("/"):
                yield item["Key"], item["Size"]


def truth_unknown_to_model(names: ClassNames, images) -> list[str]:
    """The listed truths (a folder's wnid, else its label) that are none of the model's classes:
    their images count as without truth."""
    unknown = set()
    for wnid, label in images[["wnid", "label"]].drop_duplicates().itertuples(index=False):
        wnid = wnid if isinstance(wnid, str) else None  # pandas holds a missing wnid as None or NaN
        if names.truth_index(wnid, label) is None:
            unknown.add(wnid or label)
    return sorted(unknown)
