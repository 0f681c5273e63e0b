"""S3 faults: the job's retry policy (udfs/s3_retry.py) carries reads and listings through a
faulty endpoint in its default configuration, counts what it did, fails fast on a missing or
forbidden object, and stops within its attempts and budget; an S3 that cannot be reached or a
bucket that does not exist stops the run with a clear error.

The faults come from tests/fault_proxy.py on 127.0.0.1 in front of the moto server, drawn
independently per request. The job-level runs through the same proxy are in
tests/test_s3_throttling.py and tests/test_bad_inputs.py.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import (ClientError, ConnectionClosedError, FlexibleChecksumError, ReadTimeoutError,
                                 ResponseStreamingError)

import udfs.s3_retry
from jobs.cli import parse_settings
from jobs.infer_dogs import main
from jobs.listing import list_s3
from tests.conftest import TEST_SECRET, free_port
from tests.fault_proxy import FAILURES, INDEPENDENT, FaultPlan, FaultProxy
from udfs.errors import S3RetriesExhausted, describe_failure
from udfs.s3_retry import RetryCounts, backoff_s, retry_reason, with_retries
from udfs.settings import S3Options
from udfs.storage import read_bytes, s3_client

N_OBJECTS = 40
RATE = 0.35
THREADS = 4  # as a worker's fetch threads: one client shared


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


def faulty(seed: int, **plan) -> FaultPlan:
    """35 % of requests fail (500, 503 SlowDown, reset, body cut short), each drawn on its own."""
    return FaultPlan(rate=RATE, kinds=FAILURES, seed=seed, max_consecutive=INDEPENDENT, **plan)


def read_all(uris, options, counts=None):
    def read(uri):
        try:
            return read_bytes(uri, options, 1 << 30, None, counts)
        except Exception as exc:  # what the predictor would turn into an error row
            return describe_failure(exc)

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(read, uris))


def object_path(uri: str) -> str:
    return "GET /" + uri.split("://", 1)[1]


# -- the policy on its own -------------------------------------------------------------------------
def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


@pytest.mark.parametrize("exc, reason", [
    (client_error("SlowDown", 503), "throttled"),
    (client_error("503", 503), "throttled"),  # a HEAD's 503 has no body, so no code but its status
    (client_error("TooManyRequests", 429), "throttled"),
    (client_error("InternalError", 500), "transient"),
    (client_error("502", 502), "transient"),
    (client_error("RequestTimeout", 400), "transient"),
    (ConnectionClosedError(endpoint_url="http://x"), "transient"),
    (ReadTimeoutError(endpoint_url="http://x"), "transient"),
    (ResponseStreamingError(error="IncompleteRead"), "transient"),
    (ConnectionResetError(), "transient"),
    (FlexibleChecksumError(error_msg="CRC32 mismatch"), "transient"),
    (client_error("NoSuchKey", 404), None),
    (client_error("AccessDenied", 403), None),
    (client_error("InvalidArgument", 400), None),
    (ValueError("not S3's"), None),
])
def test_what_is_retried(exc, reason):
    assert retry_reason(exc) == reason


class FakeTime:
    def __init__(self):
        self.now, self.waits = 0.0, []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def failing(n_failures: int, exc: Exception):
    calls = []

    def request():
        calls.append(1)
        if len(calls) <= n_failures:
            raise exc
        return "body"

    return request, calls


def test_waits_are_full_jitter_exponential_and_capped():
    rng = random.Random(0)
    for retry in range(1, 12):
        bound = min(20.0, 0.2 * 2 ** (retry - 1))
        waits = [backoff_s(retry, 0.2, 20.0, rng) for _ in range(200)]
        assert 0 <= min(waits) and max(waits) <= bound
        assert max(waits) > 0.8 * bound and min(waits) < 0.2 * bound  # the whole range, not a fixed step
    assert backoff_s(5000, 0.2, 20.0, rng) <= 20.0  # a huge --s3-max-attempts: still a number, still capped


def test_a_transient_failure_is_sent_again_until_it_succeeds():
    time, counts = FakeTime(), RetryCounts()
    request, calls = failing(7, client_error("SlowDown", 503))
    assert with_retries(request, S3Options(), counts, sleep=time.sleep, clock=lambda: time.now) == "body"
    assert len(calls) == 8 and len(time.waits) == 7
    assert counts.as_dict() == {"requests_retried": 7, "throttled": 7, "retried": 1, "gave_up": 0}


def test_a_final_failure_is_not_retried():
    time, counts = FakeTime(), RetryCounts()
    request, calls = failing(1, client_error("NoSuchKey", 404))
    with pytest.raises(ClientError):
        with_retries(request, S3Options(), counts, sleep=time.sleep, clock=lambda: time.now)
    assert len(calls) == 1 and time.waits == []
    assert counts.as_dict() == {"requests_retried": 0, "throttled": 0, "retried": 0, "gave_up": 0}


def test_retries_stop_at_max_attempts():
    time, counts = FakeTime(), RetryCounts()
    request, calls = failing(100, client_error("InternalError", 500))
    with pytest.raises(S3RetriesExhausted, match="still failing after 5 attempts: --s3-max-attempts reached"):
        with_retries(request, S3Options(max_attempts=5), counts, sleep=time.sleep, clock=lambda: time.now)
    assert len(calls) == 5
    assert counts.as_dict() == {"requests_retried": 4, "throttled": 0, "retried": 1, "gave_up": 1}


def test_retries_stop_within_the_budget(monkeypatch):
    """No wait that would end past the budget starts: a hot prefix slows an image by at most the
    budget, then it is one read_error row."""
    monkeypatch.setattr(udfs.s3_retry, "_rng", random.Random(1))
    time = FakeTime()
    request, calls = failing(10**6, client_error("SlowDown", 503))
    options = S3Options(max_attempts=10**6, retry_budget_s=60.0)
    with pytest.raises(S3RetriesExhausted, match="the --s3-retry-budget of 60 s reached") as caught:
        with_retries(request, options, sleep=time.sleep, clock=lambda: time.now)
    assert time.now <= 60.0
    assert max(time.waits) <= 20.0  # the cap
    assert len(calls) == len(time.waits) + 1 > 5
    assert describe_failure(caught.value)[1] == "read_error"


# -- reads through the fault proxy -------------------------------------------------------------------
def test_every_read_gets_through_35_percent_faults_in_the_default_configuration(objects, proxy):
    proxy.set_plan(faulty(seed=3))
    options, counts = S3Options(endpoint_url=proxy.endpoint), RetryCounts()
    results = read_all([uri for uri, _ in objects], options, counts)
    print(f"{proxy.injected} faults in {proxy.requests} requests {dict(proxy.faults)}; {counts.as_dict()}")
    assert results == [data for _, data in objects]  # every byte, no error
    assert set(proxy.faults) == set(FAILURES)
    assert proxy.injected >= 0.2 * proxy.requests
    # one GET per image (no HEAD first), and one retry per injected fault, counted as the proxy counts
    assert set(proxy.requests_to) == {object_path(uri) for uri, _ in objects}
    assert counts.as_dict() == {"requests_retried": proxy.injected, "throttled": proxy.faults["slow_down"],
                                "retried": len(proxy.faults_on), "gave_up": 0}


def test_one_attempt_is_not_enough(objects, proxy):
    """The control: without retries the same faults become read_error rows (one per image)."""
    proxy.set_plan(faulty(seed=3))
    counts = RetryCounts()
    results = read_all([uri for uri, _ in objects], S3Options(endpoint_url=proxy.endpoint, max_attempts=1), counts)
    failures = [r for r in results if isinstance(r, tuple)]
    assert len(failures) == len(proxy.faults_on) > 0
    assert {kind for _, kind in failures} == {"read_error"}
    assert all("still failing after 1 attempt: --s3-max-attempts reached" in error for error, _ in failures)
    assert counts.as_dict() == {"requests_retried": 0, "throttled": proxy.faults["slow_down"],
                                "retried": 0, "gave_up": len(failures)}


def test_missing_and_forbidden_objects_fail_fast_under_faults(objects, proxy, s3_images):
    """One error row each with its kind, and no request sent again after S3's answer: a denied key
    gets one request, a missing key one more than the faults the proxy put in its way."""
    missing, denied = s3_images + "no-such-folder/missing.jpg", objects[0][0]
    proxy.set_plan(faulty(seed=5, deny_keys=frozenset({denied.split("://", 1)[1]})))
    options, counts = S3Options(endpoint_url=proxy.endpoint), RetryCounts()
    tries = 8  # so that some of the missing key's requests meet faults
    for _ in range(tries):
        results = read_all([missing, denied], options, counts)
        assert [kind for _, kind in results] == ["not_found", "access_denied"]
        assert "NoSuchKey" in results[0][0] and "AccessDenied" in results[1][0]
    assert proxy.requests_to[object_path(denied)] == tries
    assert proxy.faults_on[object_path(missing)] > 0
    assert proxy.requests_to[object_path(missing)] == tries + proxy.faults_on[object_path(missing)]
    assert counts.as_dict()["gave_up"] == 0


# -- listing through the fault proxy -----------------------------------------------------------------
def test_a_listing_under_35_percent_faults_is_the_full_listing(s3_server, s3_images, proxy, monkeypatch):
    """Small pages, so that a listing is many requests; every page that met a fault is sent again."""
    import jobs.listing

    monkeypatch.setattr(jobs.listing, "LIST_PAGE_SIZE", 3)
    clean = sorted(list_s3(s3_images, S3Options(endpoint_url=s3_server)))
    proxy.set_plan(faulty(seed=7))
    counts = RetryCounts()
    listed = sorted(list_s3(s3_images, S3Options(endpoint_url=proxy.endpoint), counts))
    print(f"{proxy.injected} faults in {proxy.requests} listing requests; {counts.as_dict()}")
    assert listed == clean
    assert proxy.injected >= 5
    assert counts.as_dict() == {"requests_retried": proxy.injected, "throttled": proxy.faults["slow_down"],
                                "retried": len(proxy.faults_on), "gave_up": 0}


# -- flags and fatal endpoints ------------------------------------------------------------------------
def test_retry_flags_reach_the_policy_and_boto3_retries_nothing(tmp_path):
    settings = parse_settings(["--input", "s3://b/p/", "--output", str(tmp_path), "--s3-max-attempts", "7",
                               "--s3-retry-budget", "30", "--s3-read-timeout", "2.5", "--s3-connect-timeout", "4"])
    assert (settings.s3.max_attempts, settings.s3.retry_budget_s) == (7, 30.0)
    config = s3_client(settings.s3).meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 1}  # udfs.s3_retry retries, not boto3
    assert (config.read_timeout, config.connect_timeout) == (2.5, 4.0)
    defaults = parse_settings(["--input", "s3://b/p/", "--output", str(tmp_path)]).s3
    assert (defaults.max_attempts, defaults.retry_budget_s) == (S3Options.max_attempts, S3Options.retry_budget_s)


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
    assert "still failing after 2 attempts" in text
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
