"""The job with injected faults, for tests only:

    python tests/jobs_with_faults.py [--fail-first-attempt DIR] [--kill-driver-after-chunks N] -- JOB ARGS

Nothing here is in the production path. This script patches `jobs.run` (the run after listing)
in its own driver process and then calls `jobs.infer_dogs.main(JOB ARGS)`. The scoring function it wraps is
defined in this file, which runs as `__main__`, so cloudpickle ships it to the executors by
value: no hook, flag or environment variable exists in `udfs/` or `jobs/`.

--fail-first-attempt DIR
    Attempt 0 of scoring tasks 0 and 1 hands its first batch of rows to Spark and then dies:
    task 0's Python worker is SIGKILLed, task 1 raises. A marker file `partition-P` in DIR
    records each injected failure. Spark must retry both (a master such as local[2,4] allows 4
    attempts per task) and the rows of the failed attempts must not show.
--kill-driver-after-chunks N
    After N committed chunks of predictions, SIGKILL this driver process shortly after the next
    chunk's write has started, as a lost node or an OOM killer would: no cleanup runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from pyspark import TaskContext

import jobs.infer_dogs
import jobs.run as job

KILL_DELAY_S = 0.5


def fail_first_attempts(marker_dir: str) -> None:
    real_make_score_fn = job.make_score_fn

    def make_score_fn(settings, task_log=None):
        score = real_make_score_fn(settings, task_log)

        def score_or_die_on_first_attempt(batches):
            context = TaskContext.get()
            for rows in score(batches):
                yield rows
                partition = context.partitionId()
                if context.attemptNumber() == 0 and partition in (0, 1):  # Spark has its first rows: die now
                    Path(marker_dir, f"partition-{partition}").touch()
                    if partition == 0:
                        os.kill(os.getpid(), signal.SIGKILL)
                    raise RuntimeError(f"injected failure in partition {partition}, attempt 0")

        return score_or_die_on_first_attempt

    job.make_score_fn = make_score_fn


def kill_driver_after_chunks(n_chunks: int) -> None:
    real_append = job.append_parquet
    calls = []

    def append_parquet(frame, uri):
        calls.append(uri)
        if len(calls) == n_chunks + 1:
            print(f"jobs_with_faults: {n_chunks} chunks committed, killing the driver", file=sys.stderr, flush=True)
            threading.Timer(KILL_DELAY_S, os.kill, (os.getpid(), signal.SIGKILL)).start()
        return real_append(frame, uri)

    job.append_parquet = append_parquet


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fail-first-attempt", metavar="DIR")
    parser.add_argument("--kill-driver-after-chunks", type=int, metavar="N")
    parser.add_argument("job_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.fail_first_attempt:
        fail_first_attempts(args.fail_first_attempt)
    if args.kill_driver_after_chunks is not None:
        kill_driver_after_chunks(args.kill_driver_after_chunks)
    job_args = args.job_args[1:] if args.job_args[:1] == ["--"] else args.job_args
    return jobs.infer_dogs.main(job_args)


if __name__ == "__main__":
    sys.exit(main())
