"""The job's own retry policy for S3 requests, and the counts the run summary reports.

Every S3 request of the job (an object GET on an executor, a listing page or a weights file on
the driver) goes through `with_retries`: a transient failure (throttling, a 5xx, a reset or cut
connection, a timeout) is sent again after a full-jitter exponential backoff (a random wait in
0 .. min(cap, base * 2^n), `S3Options.backoff_*`), until it succeeds, `--s3-max-attempts` are
spent or no further wait fits into `--s3-retry-budget` seconds since the first attempt; anything
else (`NoSuchKey`, `AccessDenied`, a bad request) fails at once. boto3 clients are built with one
attempt, so retries are never multiplied.

Why not boto3's retries: its standard and adaptive modes share a retry quota per client, which a
worker's fetch threads empty under sustained faults, after which every fault fails at once
(measured in docs/performance.md, "S3 under sustained faults").
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, TypeVar

from botocore.exceptions import (ClientError, ConnectionError as BotoConnectionError, FlexibleChecksumError,
                                 HTTPClientError, IncompleteReadError)

from udfs.errors import S3RetriesExhausted
from udfs.settings import S3Options

log = logging.getLogger(__name__)
T = TypeVar("T")

# S3's and AWS's throttling answers (botocore's own list), and the HTTP statuses that say the same.
THROTTLING_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "RequestLimitExceeded", "BandwidthLimitExceeded", "RequestThrottled",
    "ProvisionedThroughputExceededException", "LimitExceededException", "EC2ThrottledException", "503", "429",
})
THROTTLING_STATUS = frozenset({429, 503})
TRANSIENT_CODES = frozenset({"InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeoutException",
                             "PriorRequestNotComplete", "500", "502", "504"})
TRANSIENT_STATUS = frozenset({500, 502, 504})


def retry_reason(exc: BaseException) -> Optional[str]:
    """Why a failure is worth sending again ("throttled" or "transient"), or None when it is final."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in THROTTLING_CODES or status in THROTTLING_STATUS:
            return "throttled"
        if code in TRANSIENT_CODES or status in TRANSIENT_STATUS:
            return "transient"
        return None
    # connections refused, reset or closed early, timeouts, bodies cut short or garbled (botocore wraps urllib3's)
    if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError, FlexibleChecksumError,
                        ConnectionError, TimeoutError)):
        return "transient"
    return None


def backoff_s(retry: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """The wait before retry number `retry` (1, 2, ...): full jitter, capped."""
    return rng.uniform(0.0, min(cap_s, base_s * 2.0 ** min(retry - 1, 64)))  # 2**64: far past any cap


@dataclass
class RetryCounts:
    """What the retries of one task (or of the driver's listing) did; safe to share between threads."""

    requests_retried: int = 0  # requests sent again
    throttled: int = 0  # throttling answers seen (SlowDown, 503, 429)
    retried: int = 0  # objects (images, listing pages) that needed at least one retry
    gave_up: int = 0  # objects still failing when the attempts or the budget ran out
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, retries: int, throttled: int, gave_up: bool) -> None:
        with self._lock:
            self.requests_retried += retries
            self.throttled += throttled
            self.retried += retries > 0
            self.gave_up += gave_up

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {"requests_retried": self.requests_retried, "throttled": self.throttled,
                    "retried": self.retried, "gave_up": self.gave_up}


_rng = random.Random()  # jitter: deliberately not seeded, so that workers do not retry in step


def with_retries(request: Callable[[], T], options: S3Options, counts: Optional[RetryCounts] = None,
                 what: str = "S3 request", sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> T:
    """`request()`, sent again while it fails transiently (see the module docstring).

    A final failure is raised as it is; one still transient when the attempts or the budget run
    out is raised as `S3RetriesExhausted` (one `read_error` row for an image)."""
    started = clock()
    attempt = retries = throttled = 0
    gave_up = False
    try:
        while True:
            attempt += 1
            try:
                return request()
            except Exception as exc:
                reason = retry_reason(exc)
                if reason is None:
                    raise
                throttled += reason == "throttled"
                wait = backoff_s(attempt, options.backoff_base_s, options.backoff_cap_s, _rng)
                if attempt >= options.max_attempts or clock() - started + wait > options.retry_budget_s:
                    gave_up = True
                    limit = ("--s3-max-attempts" if attempt >= options.max_attempts
                             else f"the --s3-retry-budget of {options.retry_budget_s:g} s")
                    raise S3RetriesExhausted(exc, attempt, limit) from exc
                log.debug("%s failed (%s, attempt %d), retrying in %.2f s: %s", what, reason, attempt, wait, exc)
                retries += 1
                sleep(wait)
    finally:
        if counts is not None:
            counts.record(retries, throttled, gave_up)
