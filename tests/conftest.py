"""Shared fixtures: a local Spark session, a loopback S3 server, sample photos, a reference model.

Images: the real Stanford Dogs photos in ../shared/data/stanford_dogs_sample when that folder
exists (CI and developer machines); otherwise (a user's fresh clone) generated JPEGs in the
same layout. Set INFER_DOGS_SYNTHETIC_IMAGES=1 to force the generated set.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

# Fake credentials for the loopback S3 server, set before Spark starts so that executors'
# Python workers inherit them. Never real AWS: every client in the tests gets an endpoint URL.
TEST_SECRET = "test-secret-key-5f1c9d"
os.environ.update({
    "AWS_ACCESS_KEY_ID": "testing-access-key",
    "AWS_SECRET_ACCESS_KEY": TEST_SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
})
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("AWS_SESSION_TOKEN", None)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = PROJECT_ROOT.parent / "shared" / "data" / "stanford_dogs_sample"
SHARED_CLASS_INDEX = PROJECT_ROOT.parent / "shared" / "data" / "imagenet_class_index.json"
TEST_BUCKET = "dogs-test"
TEST_PREFIX = "dogs/Images/"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class SampleImages:
    images_dir: Path  # the Images/ folder: <wnid>-<Breed>/<file>.jpg
    real: bool  # True: original Stanford Dogs photos from ../shared

    def files(self) -> list[Path]:
        return sorted(p for p in self.images_dir.rglob("*") if p.is_file())


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory) -> SampleImages:
    if SHARED_SAMPLE.is_dir() and not os.environ.get("INFER_DOGS_SYNTHETIC_IMAGES"):
        return SampleImages(SHARED_SAMPLE / "Images", real=True)
    from jobs.sample_images import make_synthetic_tree

    root = tmp_path_factory.mktemp("synthetic-dogs")
    return SampleImages(make_synthetic_tree(root, breeds=4, per_breed=6), real=False)


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    from jobs.spark_session import JOB_DEFAULTS

    os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)
    session = (
        SparkSession.builder.master("local[2]")
        .appName("infer-dogs-tests")
        .config(map=JOB_DEFAULTS)  # the job's own defaults (worker reuse, Arrow, live status updates)
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def s3_server():
    """A real HTTP S3 endpoint (moto server mode) on a free loopback port."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def s3_client_for(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def upload_tree(endpoint: str, images_dir: Path, bucket: str, prefix: str) -> str:
    """Upload a local tree under s3://bucket/prefix; returns that URI."""
    client = s3_client_for(endpoint)
    existing = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)
    for file in sorted(p for p in images_dir.rglob("*") if p.is_file()):
        client.upload_file(str(file), bucket, prefix + file.relative_to(images_dir).as_posix())
    return f"s3://{bucket}/{prefix}"


@pytest.fixture(scope="session")
def s3_images(s3_server, sample_images) -> str:
    """The sample images in the loopback bucket: s3://dogs-test/dogs/Images/."""
    return upload_tree(s3_server, sample_images.images_dir, TEST_BUCKET, TEST_PREFIX)


# One real run with its report, shared by tests/test_report.py and tests/test_compare.py.
from tests.report_runs import report_run  # noqa: E402,F401


@pytest.fixture(scope="module")
def one_torch_thread():
    """In-process models (predictor, reference) with one torch thread, as Spark runs them: two
    threads on two busy cores spin and run about 10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
