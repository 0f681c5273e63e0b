"""Starting Spark for the job with the settings scoring depends on.

Values given by spark-submit (`--conf`, spark-defaults.conf, a platform's cluster config) win;
the job only fills in what is unset: Python worker reuse (the model stays loaded between
tasks), Arrow, `maxRecordsPerBatch` sized for paths (the job's `--arrow-batch-size`, when given,
wins over a submitted value), no locality wait (input is remote), and, in local modes, the
driver's own interpreter for the Python workers.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

from pyspark import SparkConf, SparkContext
from pyspark.resource import ResourceProfile, ResourceProfileBuilder, TaskResourceRequests
from pyspark.sql import SparkSession

from jobs.cli import UsageError
from udfs.settings import Settings

log = logging.getLogger(__name__)

JOB_DEFAULTS = {
    "spark.python.worker.reuse": "true",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.locality.wait": "0s",
    # The progress display (jobs/progress.py) reads running tasks from Spark's status store. By
    # default the store writes a stage's counts at most every 100 ms per entity, so the tasks
    # launched together right after a stage starts stay invisible (0 running) until the next
    # heartbeat or task end: measured, a 2-task stage showed 0 running in 5 of 6 runs. Writing on
    # every task event costs nothing at this job's task counts (a few per executor core).
    "spark.ui.liveUpdate.period": "0ms",
}
# Set whatever was submitted: the job shows its own progress (jobs/progress.py), and PySpark's
# gateway pre-sets spark.ui.showConsoleProgress=true when the job is started with plain
# `python`/`infer-dogs` (it launches spark-submit as a "pyspark-shell"), so "fill if unset"
# would never turn Spark's bar off.
JOB_OVERRIDES = {
    "spark.ui.showConsoleProgress": "false",
}


def spark_log_level(verbose: int) -> str:
    """Spark's log4j level for `-v` counts: WARN by default, INFO with -v, DEBUG with -vv."""
    return ("WARN", "INFO", "DEBUG")[min(max(verbose, 0), 2)]


def set_jvm_log_level(level: str) -> None:
    """Spark's log level before a SparkContext exists, so that its start-up INFO lines are quiet too.

    spark-submit resets Spark's logging before it runs the job, and the SparkContext would then
    load log4j2-defaults (INFO) over any level set here: initialise it first (silently)."""
    jvm = SparkContext._jvm
    if jvm is not None:
        jvm.org.apache.spark.SparkConf(False).initializeLogIfNecessary(False, True)
        jvm.org.apache.logging.log4j.core.config.Configurator.setRootLevel(
            jvm.org.apache.logging.log4j.Level.toLevel(level))


def start_spark(settings: Settings, app_name: str = "infer-dogs") -> SparkSession:
    # Connect to (or launch) the JVM first so that SparkConf sees what spark-submit set.
    SparkContext._ensure_initialized()
    set_jvm_log_level(spark_log_level(settings.verbose))
    submitted = SparkConf()
    builder = SparkSession.builder.appName(app_name)
    master = submitted.get("spark.master", None)
    if master is None or (settings.master and "PYSPARK_GATEWAY_PORT" not in os.environ):
        # Without spark-submit (plain `python`/`infer-dogs`), PySpark's own launcher pre-sets
        # spark.master=local[*]: there --master decides.
        master = settings.master or "local[*]"
        builder = builder.master(master)
    for key, value in JOB_DEFAULTS.items():
        if not submitted.contains(key):
            builder = builder.config(key, value)
    for key, value in JOB_OVERRIDES.items():
        builder = builder.config(key, value)
    if master.startswith("local") and "PYSPARK_PYTHON" not in os.environ:
        # PySpark starts Python workers with PYSPARK_PYTHON (else `python3` on PATH, which may
        # lack torch). On one machine the driver's own interpreter is the right one.
        os.environ["PYSPARK_PYTHON"] = submitted.get("spark.pyspark.python", sys.executable)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(spark_log_level(settings.verbose))
    log.info("Spark %s, master %s, default parallelism %d", spark.version, master, spark.sparkContext.defaultParallelism)
    return spark


ARROW_BATCH_KEY = "spark.sql.execution.arrow.maxRecordsPerBatch"
DEFAULT_ARROW_BATCH_SIZE = 256  # paths, not images: an Arrow batch of paths is a few KB


def configure_session(spark: SparkSession, settings: Settings) -> Settings:
    """Runtime (SQL) settings, also applied to a session the caller already had; returns the
    settings with the Arrow batch size this run uses: `--arrow-batch-size`, else the value
    submitted to Spark (a cluster's config), else 256. Spark's own default, 10,000 records, is
    sized for rows of data: for paths it would hand a whole task to the UDF as one batch."""
    size = settings.arrow_batch_size
    if size is None:
        submitted = spark.sparkContext.getConf().get(ARROW_BATCH_KEY, None)
        if not submitted:
            size = DEFAULT_ARROW_BATCH_SIZE
        elif submitted.strip().isdigit() and int(submitted) >= 1:
            size = int(submitted)
        else:
            raise UsageError(f"{ARROW_BATCH_KEY}={submitted} was submitted: it must be a whole number of at least 1")
    spark.conf.set(ARROW_BATCH_KEY, str(size))
    return settings.with_arrow_batch_size(size)


class GpuSchedulingError(ValueError):
    """--gpu-stage-only cannot work with this Spark configuration (a user error: exit code 2)."""


def scoring_profile(spark: SparkSession, settings: Settings) -> Optional[ResourceProfile]:
    """With --gpu-stage-only: a TaskResourceProfile asking a GPU share for each scoring task only.

    Executors get their GPUs from the default profile (spark.executor.resource.gpu.*); only the
    stage that runs the UDF asks for them, so the other stages are not limited to one task per
    GPU share. Spark supports this without dynamic allocation on standalone, YARN and Kubernetes.
    """
    if not settings.gpu_stage_only:
        return None
    context = spark.sparkContext
    conf = context.getConf()
    if context.master == "local" or context.master.startswith("local["):
        raise GpuSchedulingError("--gpu-stage-only needs a cluster manager (standalone, YARN, Kubernetes); "
                                 f"master {context.master} has no stage-level scheduling")
    if not conf.contains("spark.executor.resource.gpu.amount"):
        raise GpuSchedulingError("--gpu-stage-only needs executors with GPUs: set spark.executor.resource.gpu.amount "
                                 "(see conf/spark-defaults.gpu.conf), else the scoring tasks never start")
    if conf.contains("spark.task.resource.gpu.amount"):
        log.warning("--gpu-stage-only with spark.task.resource.gpu.amount set: every other stage asks for GPUs too")
    requests = TaskResourceRequests().cpus(int(conf.get("spark.task.cpus", "1")))
    requests.resource("gpu", settings.gpu_task_amount or 1.0)
    log.info("scoring stage asks for %s GPU per task (stage-level scheduling)", settings.gpu_task_amount or 1.0)
    return ResourceProfileBuilder().require(requests).build


def scoring_partitions(spark: SparkSession, n_images: int, tasks_per_slot: int) -> int:
    """Several tasks per executor slot (balance, retries stay cheap), never more than images."""
    slots = max(1, spark.sparkContext.defaultParallelism)
    return max(1, min(n_images, slots * tasks_per_slot))
