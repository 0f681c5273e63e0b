"""The run on a started Spark: weights, scoring, aggregation, report, summary.

`run_job` is everything after listing: resolve and ship the weights, score the images on the
executors and append the predictions, aggregate per class from the written Parquet, write the
report and, last, summary.json. It is its own module because it imports torch (through the
weights, the UDF and the report, ~3 s): `jobs.infer_dogs.main` imports it in the background
while the main thread starts Spark, and the command line's own paths (help, usage errors, dry
runs) never import it.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from pyspark.resource import ResourceProfile
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.cli import validate_model
from jobs.listing import Listing, truth_unknown_to_model
from jobs.outputs import (RunPaths, append_parquet, check_one_row_per_image, prepare_output, write_parquet,
                          write_summary)
from jobs.per_class import overall_counts, per_class_accuracy
from jobs.progress import ScoringProgress
from jobs.report import write_run_report
from jobs.resume import chunks, pending_images
from jobs.spark_session import configure_session, scoring_partitions, scoring_profile
from jobs.summary import build_summary
from udfs.model import resolve_weights
from udfs.schema import IMAGES_SCHEMA, SCORED_SCHEMA
from udfs.scoring_udf import make_score_fn
from udfs.settings import Settings
from udfs.task_log import RecordListParam

log = logging.getLogger("infer_dogs")
_weights_dir: Optional[Path] = None


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def weights_workdir() -> Path:
    """One folder per driver process: Spark refuses the same file name from two paths."""
    global _weights_dir
    if _weights_dir is None:
        _weights_dir = Path(tempfile.mkdtemp(prefix="infer-dogs-weights-"))
    return _weights_dir


def prepare_weights(settings: Settings) -> Settings:
    """Resolve --model, --classes and the weights on the driver, once: fetch the file (the library's
    download, --weights from disk or S3, or seeded random weights), check that its head has one
    output per class and that it loads. `main` calls it before Spark starts whenever something must
    be read or fetched, so that a run that cannot have its weights or classes ends with one line
    instead of a started Spark; `ship_weights` then ships what it found."""
    settings = validate_model(settings)
    if settings.weights_source is not None:
        return settings
    return settings.with_weights_source(resolve_weights(
        settings.model_source, settings.weights, settings.random_weights, weights_workdir(), settings.s3
    ))


def ship_weights(spark: SparkSession, settings: Settings) -> Settings:
    """The resolved weights file, shipped to every executor."""
    settings = prepare_weights(settings)
    source = settings.weights_source
    spark.sparkContext.addFile(source.driver_path)
    if source.is_random:
        log.warning("using RANDOM weights (seed %s): predictions are meaningless", source.seed)
    log.info("weights %s (sha256 %s)", source.description, source.sha256[:16])
    return settings


def score_images(spark: SparkSession, settings: Settings, images, task_log,
                 profile: Optional[ResourceProfile] = None) -> DataFrame:
    """The lazy predictions DataFrame: paths spread over the slots, scored by the UDF (on `profile`)."""
    frame = spark.createDataFrame(images, schema=IMAGES_SCHEMA)
    frame = frame.repartition(scoring_partitions(spark, len(images), settings.tasks_per_slot))
    scored = frame.mapInPandas(make_score_fn(settings, task_log), SCORED_SCHEMA, profile=profile)
    return scored.select(
        *SCORED_SCHEMA.fieldNames(),
        F.lit(settings.model).alias("model"),
        F.lit(settings.weights_source.sha256).alias("weights_sha256"),
        F.lit(settings.run_id).alias("run_id"),
    )


def run_job(spark: SparkSession, settings: Settings, listing: Listing,
            timings: Optional[dict[str, float]] = None) -> dict[str, Any]:
    """Everything after listing, on a running Spark; returns the summary (also written)."""
    timings = dict(timings or {})
    started = time.perf_counter()
    paths = RunPaths(settings.output)
    settings = validate_model(configure_session(spark, settings))  # resolved once; a no-op after main's
    profile = scoring_profile(spark, settings)  # checked before OUTPUT is touched, like the weights
    settings = ship_weights(spark, settings)  # before OUTPUT is touched: bad weights clear nothing
    prepare_output(spark, paths, settings.mode, settings.resume)
    pending, resumed_run_id = pending_images(spark, paths, settings, listing.images)
    settings = settings.with_run_id(resumed_run_id or settings.run_id or new_run_id())
    unknown_truth = truth_unknown_to_model(settings.model_source.classes, listing.images)
    if unknown_truth:
        log.warning("%d listed class(es) are not among %s's classes, so their images count in no accuracy: %s",
                    len(unknown_truth), settings.model, ", ".join(unknown_truth[:10]))
    timings["weights"] = timings.get("weights", 0.0) + time.perf_counter() - started  # main's share before Spark

    step = time.perf_counter()
    task_log = spark.sparkContext.accumulator([], RecordListParam())
    with ScoringProgress(spark.sparkContext, total_images=len(pending), task_log=task_log,
                         mode=settings.progress, interval_s=settings.progress_interval,
                         tag=f"infer-dogs-scoring-{settings.run_id}"):
        for chunk in chunks(pending, settings.commit_every):  # each chunk committed on its own
            append_parquet(score_images(spark, settings, chunk, task_log, profile), paths.predictions)
    timings["score_and_write_predictions"] = time.perf_counter() - step

    step = time.perf_counter()
    predictions = spark.read.parquet(paths.predictions)  # aggregate the written rows: no re-scoring
    totals = overall_counts(predictions)
    check_one_row_per_image(totals, len(listing.images))
    write_parquet(per_class_accuracy(predictions), paths.per_class)
    timings["aggregate"] = time.perf_counter() - step
    timings["total"] = sum(timings.values())
    outputs = {"predictions": paths.predictions, "per_class_accuracy": paths.per_class, "summary": paths.summary}

    def summarize() -> dict[str, Any]:
        return build_summary(
            settings,
            totals,
            {"listed": listing.total_images, "skipped_non_image": listing.skipped_non_image,
             "skipped_in_output": listing.skipped_in_output, "skipped_bad_name": listing.skipped_bad_name,
             "kept_from_earlier_attempt": len(listing.images) - len(pending)},
            list(task_log.value),
            timings,
            unknown_truth,
            {"version": spark.version, "master": spark.sparkContext.master,
             "default_parallelism": spark.sparkContext.defaultParallelism},
            outputs,
            listing.s3_retries,
        )

    summary = summarize()
    if settings.precision != "auto" and summary["precisions"] and summary["precisions"] != [settings.precision]:
        log.warning("--precision %s was asked for; the Python workers ran %s (fp16 never runs on a CPU, nor bf16 on "
                    "a CPU without bf16 instructions)", settings.precision, ", ".join(summary["precisions"]))
    if settings.report:  # from the written Parquet; summary.json stays the last file written
        step = time.perf_counter()
        report = write_run_report(spark, settings.s3, paths, summary)
        timings["report"] = time.perf_counter() - step
        timings["total"] += timings["report"]
        if report:
            outputs["report"] = report
        summary = summarize()
    write_summary(spark, paths, summary)
    return summary
