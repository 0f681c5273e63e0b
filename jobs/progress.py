"""Progress of scoring, shown on the driver while Spark works.

Two driver-side sources, read by a background thread:
- The run's task-log accumulator (`udfs.task_log`): the exact images, errors and count of every
  scoring task that has finished.
- Spark's status tracker: running tasks and failed attempts in this run's stages (the scoring
  jobs carry a job tag, so another job on the same SparkContext is not counted). The job sets
  `spark.ui.liveUpdate.period=0ms` (jobs/spark_session.py) so that running tasks show as soon as
  they start; on a session that already existed (Databricks) Spark's 100 ms default applies and
  the running count can lag until the next heartbeat or task end (the image counts do not).

Progress moves when a scoring task finishes, because that is when Spark sends a task's
accumulator updates to the driver: a Python task's counts do not reach the driver while it
runs. There are `--tasks-per-slot` (default 3) scoring tasks per executor core, so a run on a
2-core machine moves in steps of about 1/6; the elapsed time keeps moving in between. The rate
(and so the ETA) counts from the moment the first task ran, which includes building the model.

Rendering: a tqdm bar on a terminal, one log line every `--progress-interval` seconds
otherwise (CI, cluster logs), nothing with `--progress off`. A display that fails never fails
the run: it logs why and stops.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, TextIO

from pyspark import SparkContext

log = logging.getLogger(__name__)

BAR_REFRESH_S = 0.5


@dataclass(frozen=True)
class Snapshot:
    """Where scoring stands at one moment."""

    total_images: int
    images_done: int
    errors: int
    elapsed_s: float  # since the scoring action started (shuffling the paths, then scoring)
    tasks_done: int = 0  # scoring tasks finished (their task-log records)
    tasks_running: int = 0
    tasks_failed: int = 0  # failed task attempts (Spark retries them)
    scoring_s: Optional[float] = None  # since the first task ran

    @property
    def rate(self) -> Optional[float]:
        """Images per second since the first task ran (None before a scoring task finishes)."""
        seconds = self.scoring_s if self.scoring_s is not None else self.elapsed_s
        if self.images_done <= 0 or seconds <= 0:
            return None
        return self.images_done / seconds

    @property
    def eta_s(self) -> Optional[float]:
        rate = self.rate
        if rate is None:
            return None
        return max(0.0, (self.total_images - self.images_done) / rate)

    @property
    def fraction(self) -> float:
        return self.images_done / self.total_images if self.total_images else 1.0


def finished_counts(records: Iterable[dict[str, Any]]) -> tuple[int, int, int]:
    """(tasks, images, errors) over the task-log records of finished scoring tasks."""
    tasks = images = errors = 0
    for record in records:
        tasks += 1
        images += int(record.get("images", 0))
        errors += int(record.get("errors", 0))
    return tasks, images, errors


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_tasks(snapshot: Snapshot) -> str:
    if not (snapshot.tasks_done or snapshot.tasks_running or snapshot.tasks_failed):
        return "tasks starting"
    text = f"tasks {snapshot.tasks_done} done, {snapshot.tasks_running} running"
    if snapshot.tasks_failed:
        text += f", {snapshot.tasks_failed} failed attempts"
    return text


def format_line(snapshot: Snapshot) -> str:
    """One progress line for logs: images done/total, images/s, ETA, errors, tasks."""
    rate = snapshot.rate
    return (
        f"scoring: {snapshot.images_done:,}/{snapshot.total_images:,} images ({100 * snapshot.fraction:.1f}%)"
        f"  {'?' if rate is None else f'{rate:.1f}'} images/s"
        f"  elapsed {format_duration(snapshot.elapsed_s)}  ETA {format_duration(snapshot.eta_s)}"
        f"  errors {snapshot.errors:,}  {format_tasks(snapshot)}"
    )


class StageWatcher:
    """Running tasks and failed attempts over the stages of the jobs that carry `tag`."""

    def __init__(self, sc: SparkContext, tag: str):
        self._sc = sc
        self._tag = tag
        self._tracker = sc.statusTracker()

    def job_ids(self) -> list[int]:
        return sorted(int(j) for j in self._sc._jsc.sc().statusTracker().getJobIdsForTag(self._tag))

    def tasks(self) -> tuple[int, int]:
        """(running tasks, failed task attempts) in this run's tagged stages."""
        stage_ids: set[int] = set()
        for job_id in self.job_ids():
            job = self._tracker.getJobInfo(job_id)
            if job is not None:
                stage_ids.update(job.stageIds)
        running = failed = 0
        for stage_id in stage_ids:
            stage = self._tracker.getStageInfo(stage_id)
            if stage is not None:
                running += stage.numActiveTasks
                failed += stage.numFailedTasks
        return running, failed


class _Bar:
    """A tqdm bar over images, fed with snapshots (rate and ETA are the snapshot's, as in the log lines)."""

    def __init__(self, total: int, stream: TextIO):
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit="img", desc="scoring", file=stream, dynamic_ncols=True,
                         bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} images [{elapsed}{postfix}]")

    def show(self, snapshot: Snapshot) -> None:
        rate = snapshot.rate
        self._bar.n = snapshot.images_done
        self._bar.set_postfix_str(
            f"ETA {format_duration(snapshot.eta_s)}, {'?' if rate is None else f'{rate:.1f}'} images/s, "
            f"errors {snapshot.errors}, {format_tasks(snapshot)}", refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


class ScoringProgress:
    """Context manager around the scoring action: tags its jobs and shows progress until it ends.

        with ScoringProgress(spark.sparkContext, total_images=n, task_log=acc, mode="auto", tag=...):
            write_parquet(scored_frame, uri)
    """

    def __init__(self, sc: SparkContext, *, total_images: int, task_log, mode: str = "auto",
                 interval_s: float = 30.0, tag: str = "infer-dogs-scoring", stream: Optional[TextIO] = None,
                 clock: Callable[[], float] = time.monotonic):
        self._sc = sc
        self._total = total_images
        self._task_log = task_log
        self._stream = stream if stream is not None else sys.stderr
        self._mode = self.resolve_mode(mode, self._stream)
        self._interval = interval_s
        self._tag = tag
        self._clock = clock
        self._watcher = StageWatcher(sc, tag)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._started = 0.0
        self._scoring_started: Optional[float] = None
        self._bar: Optional[_Bar] = None
        self._redirect = contextlib.ExitStack()
        self.last: Optional[Snapshot] = None

    @staticmethod
    def resolve_mode(mode: str, stream: TextIO) -> str:
        if mode != "auto":
            return mode
        isatty = getattr(stream, "isatty", None)
        return "bar" if isatty is not None and isatty() else "log"

    @property
    def mode(self) -> str:
        return self._mode

    def snapshot(self) -> Snapshot:
        records = list(self._task_log.value) if self._task_log is not None else []
        tasks, images, errors = finished_counts(records)
        running, failed = self._watcher.tasks()
        now = self._clock()
        if self._scoring_started is None and (running or tasks):
            self._scoring_started = now
        scoring = now - self._scoring_started if self._scoring_started is not None else None
        return Snapshot(self._total, images, errors, now - self._started, tasks, running, failed, scoring)

    def __enter__(self) -> "ScoringProgress":
        self._sc.addJobTag(self._tag)
        self._started = self._clock()
        if self._mode == "off":
            return self
        if self._mode == "bar":
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = _Bar(self._total, self._stream)
            self._redirect.enter_context(logging_redirect_tqdm())  # log lines print above the bar
        self._thread = threading.Thread(target=self._run, name="infer-dogs-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            if self._mode != "off" and exc_type is None:
                self._show(self.snapshot(), final=True)
        finally:
            if self._bar is not None:
                self._bar.close()
            self._redirect.close()
            self._sc.removeJobTag(self._tag)

    def _run(self) -> None:
        period = BAR_REFRESH_S if self._mode == "bar" else min(1.0, self._interval)
        last_line = self._clock()
        while not self._stop.wait(period):
            try:
                snapshot = self.snapshot()
                if self._mode == "bar":
                    self._show(snapshot)
                elif self._clock() - last_line >= self._interval:
                    self._show(snapshot)
                    last_line = self._clock()
            except Exception as exc:  # the display must never fail the run: say why, stop showing
                log.warning("progress display stopped: %s: %s", type(exc).__name__, exc)
                return

    def _show(self, snapshot: Snapshot, final: bool = False) -> None:
        self.last = snapshot
        if self._bar is not None:
            self._bar.show(snapshot)
        elif final:
            log.info("%s (scoring finished)", format_line(snapshot))
        else:
            log.info("%s", format_line(snapshot))
