"""S3 faults: boto3's retry configuration carries reads through a faulty endpoint, and an S3 that
cannot be reached or a bucket that does not exist stops the run with a clear error.

The faults come from tests/fault_proxy.py on 127.0.0.1 in front of the moto server. The job-level
run through the same proxy (outputs identical to a clean run) is in tests/test_bad_inputs.py.
"""

from __future__ import annotations

import pytest

from jobs.cli import parse_settings
from jobs.infer_dogs import main
from jobs.listing import list_s3
from tests.conftest import TEST_SECRET, free_port
from tests.fault_proxy import FAULTS, FaultPlan, FaultProxy
from udfs.errors import describe_failure
from udfs.settings import S3Options
from udfs.storage import read_bytes, s3_client

N_OBJECTS = 20
RATE = 0.3


@pytest.fixture(scope="module")
def objects(s3_server, s3_images):
    """(uri, bytes) of the first objects, read directly from the moto server."""
    options = S3Options(endpoint_url=s3_server)
    uris = sorted(uri for uri, _ in list_s3(s3_images, options))[:N_OBJECTS]
    return [(uri, read_bytes(uri, options, 1 << 30)) for uri in uris]


@pytest.fixture
def proxy(s3_server):
    proxy = FaultProxy(s3_server).start()
    yield proxy
    proxy.stop()


def read_all(uris, options):
    results = []
    for uri in uris:
        try:
            results.append(read_bytes(uri, options, 1 << 30))
        except Exception as exc:  # what the predictor would turn into an error row
            results.append(describe_failure(exc))
    return results


@pytest.mark.parametrize("mode", ["standard", "adaptive", "legacy"])
def test_retries_carry_every_read_through_faults(objects, proxy, mode):
    proxy.set_plan(FaultPlan(rate=RATE, seed=3))
    options = S3Options(endpoint_url=proxy.endpoint, retry_mode=mode, max_attempts=5, read_timeout_s=1.0)
    results = read_all([uri for uri, _ in objects], options)
    print(f"{mode}: {proxy.injected} faults in {proxy.requests} requests {dict(proxy.faults)}")
    assert results == [data for _, data in objects]  # every byte, no error
    assert set(proxy.faults) == set(FAULTS)
    assert proxy.injected >= 0.15 * proxy.requests


def test_one_attempt_is_not_enough(objects, proxy):
    """The control: without retries the same faults become read_error rows (one per image)."""
    proxy.set_plan(FaultPlan(rate=RATE, seed=3))
    options = S3Options(endpoint_url=proxy.endpoint, retry_mode="standard", max_attempts=1, read_timeout_s=1.0)
    results = read_all([uri for uri, _ in objects], options)
    failures = [r for r in results if isinstance(r, tuple)]
    assert failures, "the faults should hit some reads"
    assert {kind for _, kind in failures} == {"read_error"}
    assert len(results) == len(objects)


def test_retry_flags_reach_the_boto3_client(tmp_path):
    settings = parse_settings(["--input", "s3://b/p/", "--output", str(tmp_path), "--s3-retry-mode", "legacy",
                               "--s3-max-attempts", "7", "--s3-read-timeout", "2.5", "--s3-connect-timeout", "4"])
    config = s3_client(settings.s3).meta.config
    assert config.retries == {"mode": "legacy", "total_max_attempts": 7}  # the first try included
    assert (config.read_timeout, config.connect_timeout) == (2.5, 4.0)


def run_main(argv, capfd) -> tuple[int, str]:
    code = main(argv)
    captured = capfd.readouterr()
    return code, captured.out + captured.err


def test_unreachable_s3_is_a_clear_error_and_writes_nothing(tmp_path, capfd):
    out = tmp_path / "run"
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code, text = run_main(["--input", "s3://dogs-test/dogs/Images/", "--output", str(out), "--random-weights", "1",
                           "--s3-endpoint-url", endpoint, "--s3-max-attempts", "2"], capfd)
    assert code == 2
    assert "infer-dogs: error: cannot list s3://dogs-test/dogs/Images/" in text
    assert "Could not connect to the endpoint URL" in text
    assert not out.exists()
    assert TEST_SECRET not in text


def test_missing_bucket_is_a_clear_error_and_writes_nothing(s3_server, tmp_path, capfd):
    out = tmp_path / "run"
    code, text = run_main(["--input", "s3://no-such-bucket/Images/", "--output", str(out), "--random-weights", "1",
                           "--s3-endpoint-url", s3_server], capfd)
    assert code == 2
    assert "infer-dogs: error: cannot list s3://no-such-bucket/Images/: NoSuchBucket" in text
    assert not out.exists()
    assert TEST_SECRET not in text
