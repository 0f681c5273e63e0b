"""The job under sustained S3 faults, in its default S3 configuration: 35 % of all requests
(listing pages and image GETs) answered 500 InternalError or 503 SlowDown, reset, or cut off
mid-body, each drawn independently. Every image is scored and every row equals a clean run's;
the summary's retry counts are the fault proxy's own counts (tests/fault_proxy.py).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from jobs.cli import parse_settings
from jobs.listing import list_images
from jobs.run import run_job
from jobs.summary import format_summary
from tests.fault_proxy import FAILURES, INDEPENDENT, FaultPlan, FaultProxy
from tests.helpers import read_predictions

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

LIMIT = 36  # images scored (of 120 photos, or 24 generated ones); the listing is the whole bucket
RATE = 0.35


@pytest.fixture(scope="module")
def proxy(s3_server):
    proxy = FaultProxy(s3_server).start()
    yield proxy
    proxy.stop()


def argv(s3_images: str, out, endpoint: str) -> list[str]:
    """Defaults for everything S3 (attempts, budget, timeouts): only the endpoint is given."""
    return ["--input", s3_images, "--output", str(out), "--model", "mobilenet_v3_small", "--random-weights", "7",
            "--limit", str(LIMIT), "--batch-size", "4", "--arrow-batch-size", "4", "--no-report",
            "--s3-endpoint-url", endpoint]


def run(spark, s3_images, out, endpoint):
    settings = parse_settings(argv(s3_images, out, endpoint))
    listing = list_images(settings)
    return listing, run_job(spark, settings, listing)


def test_every_image_is_scored_as_in_a_clean_run_and_the_retries_are_counted(spark, s3_server, s3_images, proxy,
                                                                             tmp_path):
    clean_listing, clean = run(spark, s3_images, tmp_path / "clean", s3_server)
    proxy.set_plan(FaultPlan(rate=RATE, kinds=FAILURES, seed=11, max_consecutive=INDEPENDENT))
    try:
        listing, faulty = run(spark, s3_images, tmp_path / "faulty", proxy.endpoint)
    finally:
        faults, faults_on, requests_to = dict(proxy.faults), dict(proxy.faults_on), dict(proxy.requests_to)
        proxy.set_plan(FaultPlan())
    print(f"fault proxy: {sum(faults.values())} faults in {sum(requests_to.values())} requests ({faults}); "
          f"summary: {faulty['s3_retries']}")

    # the full listing, every image scored, every row as in the clean run
    pd.testing.assert_frame_equal(listing.images, clean_listing.images)
    assert len(listing.images) == min(LIMIT, listing.total_images)  # 24 generated images without ../shared
    assert faulty["counts"]["images"] == faulty["counts"]["scored"] == len(listing.images)
    assert faulty["errors_by_kind"] == {}
    before, after = read_predictions(tmp_path / "clean"), read_predictions(tmp_path / "faulty")
    pd.testing.assert_frame_equal(before.drop(columns="run_id"), after.drop(columns="run_id"))
    for key in ("counts", "accuracy"):
        assert faulty[key] == clean[key]

    # the summary counts what the proxy did: one retry per fault, throttles as the SlowDowns
    object_gets = {line for line in faults_on if "?" not in line}
    listing_pages = set(faults_on) - object_gets
    reads, listed = faulty["s3_retries"]["reads"], faulty["s3_retries"]["listing"]
    assert set(faults) == set(FAILURES) and sum(faults.values()) >= 0.2 * sum(requests_to.values())
    assert reads["requests_retried"] + listed["requests_retried"] == sum(faults.values())
    assert reads["throttling_responses"] + listed["throttling_responses"] == faults["slow_down"]
    assert reads["requests_retried"] == sum(faults_on[line] for line in object_gets) > 0
    assert reads["images_retried"] == len(object_gets)
    assert listed["pages_retried"] == len(listing_pages)
    assert reads["images_given_up"] == 0
    assert clean["s3_retries"] == {
        "reads": {"requests_retried": 0, "throttling_responses": 0, "images_retried": 0, "images_given_up": 0},
        "listing": {"requests_retried": 0, "throttling_responses": 0, "pages_retried": 0}}
    assert json.loads((tmp_path / "faulty" / "summary.json").read_text())["s3_retries"] == faulty["s3_retries"]
    [line] = [line for line in format_summary(faulty).splitlines() if line.startswith("S3 retries ")]
    assert line.endswith(f"images: {reads['requests_retried']:,} requests retried for {reads['images_retried']:,} "
                         f"images ({reads['throttling_responses']:,} throttling answers), 0 still failing after "
                         f"retries; listing: " + (
                             "none" if not listed["requests_retried"] else
                             f"{listed['requests_retried']:,} requests retried for {listed['pages_retried']:,} pages "
                             f"({listed['throttling_responses']:,} throttling answers)")), line
