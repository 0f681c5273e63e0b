"""The driver-side progress display (jobs/progress.py): numbers, lines, bar, and a real Spark job."""

from __future__ import annotations

import io
import logging
import threading
import time

import pytest

from jobs.progress import ScoringProgress, Snapshot, StageWatcher, finished_counts, format_duration, format_line


def test_snapshot_rate_and_eta_count_from_the_first_task():
    snapshot = Snapshot(total_images=1000, images_done=250, errors=3, elapsed_s=60.0, tasks_done=2,
                        tasks_running=2, scoring_s=50.0)
    assert snapshot.rate == pytest.approx(5.0)
    assert snapshot.eta_s == pytest.approx(150.0)
    assert snapshot.fraction == 0.25
    waiting = Snapshot(total_images=1000, images_done=0, errors=0, elapsed_s=5.0)
    assert waiting.rate is None and waiting.eta_s is None


def test_progress_line_says_done_total_rate_eta_errors_tasks():
    line = format_line(Snapshot(20580, 5145, 7, 600.0, 3, 2, 1, 500.0))
    assert line == ("scoring: 5,145/20,580 images (25.0%)  10.3 images/s  elapsed 10m00s  ETA 25m00s  "
                    "errors 7  tasks 3 done, 2 running, 1 failed attempts")
    assert format_duration(3725) == "1h02m" and format_duration(None) == "?"


def test_finished_counts_sum_the_task_records():
    assert finished_counts([{"images": 20, "errors": 1}, {"images": 15, "errors": 0}]) == (2, 35, 1)


class _Accumulator:
    def __init__(self) -> None:
        self.value: list[dict] = []


def test_auto_mode_is_a_bar_on_a_terminal_and_log_lines_otherwise():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert ScoringProgress.resolve_mode("auto", Tty()) == "bar"
    assert ScoringProgress.resolve_mode("auto", io.StringIO()) == "log"
    assert ScoringProgress.resolve_mode("off", Tty()) == "off"


def test_log_and_bar_modes_follow_a_tagged_spark_job(spark, caplog):
    """A real job carrying the tag: running tasks are seen; finished counts come from the accumulator."""
    log_records = _Accumulator()
    seen: list[int] = []
    stop = threading.Event()

    def slow(rows):
        time.sleep(3.0)  # long enough for the 0.1 s poller to see running tasks on a busy machine
        return rows

    with caplog.at_level(logging.INFO, logger="jobs.progress"):
        with ScoringProgress(spark.sparkContext, total_images=40, task_log=log_records, mode="log",
                             interval_s=0.2, tag="progress-test") as progress:
            watcher = StageWatcher(spark.sparkContext, "progress-test")
            poller = threading.Thread(target=lambda: [seen.append(watcher.tasks()[0]) or time.sleep(0.1)
                                                      for _ in iter(lambda: stop.is_set(), True)])
            poller.start()
            spark.sparkContext.parallelize(range(4), 2).mapPartitions(slow).collect()  # job tags are per thread
            stop.set()
            poller.join()
            log_records.value.extend([{"images": 20, "errors": 1}, {"images": 20, "errors": 0}])
    # Both tasks run at once on local[2]; Spark's default 100 ms live-update throttle hid them (0 running)
    assert max(seen) == 2, "the watcher sees the tagged job's running tasks"
    lines = [r.getMessage() for r in caplog.records if r.name == "jobs.progress"]
    assert lines[-1].startswith("scoring: 40/40 images (100.0%)") and "errors 1" in lines[-1]
    assert progress.last.tasks_done == 2
    assert "progress-test" not in (spark.sparkContext.getLocalProperty("spark.job.tags") or "")

    stream = io.StringIO()
    bar_log = _Accumulator()
    with ScoringProgress(spark.sparkContext, total_images=10, task_log=bar_log, mode="bar", stream=stream,
                         tag="progress-test-bar"):
        bar_log.value.append({"images": 10, "errors": 0})
    assert "10/10 images" in stream.getvalue() and "errors 0" in stream.getvalue()


def test_off_mode_shows_nothing(spark, caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="jobs.progress"):
        with ScoringProgress(spark.sparkContext, total_images=5, task_log=_Accumulator(), mode="off", stream=stream):
            pass
    assert stream.getvalue() == "" and not [r for r in caplog.records if r.name == "jobs.progress"]
