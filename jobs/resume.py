"""Resuming an interrupted run: which listed images still need a row, in committed chunks.

Predictions are appended to `predictions/` in chunks of `--commit-every` images, each chunk a
Spark write job with its own commit, so a run killed part-way keeps the chunks it finished (and
perhaps an uncommitted `_temporary/` that readers skip and `--resume` deletes). `--resume` keeps
the committed rows when the same model and weights made them (and continues their run id),
scores only the listed images without a row, then aggregates the whole table: the final outputs
equal an uninterrupted run's. Rows made by another model or weights, rows for images that are
not in this listing, or an image with two rows are never mixed in: the run stops with exit
code 2 and says why. Error rows are rows: resuming does not retry them.
"""

from __future__ import annotations

import logging
from typing import Iterator, Optional

import pandas as pd
from pyspark.sql import SparkSession

from jobs.outputs import HadoopFiles, OutputExistsError, RunPaths
from udfs.schema import PREDICTIONS_SCHEMA
from udfs.settings import Settings

log = logging.getLogger(__name__)


class ResumeError(OutputExistsError):
    """OUTPUT's predictions cannot be continued by this run (exit code 2)."""


def pending_images(spark: SparkSession, paths: RunPaths, settings: Settings,
                   images: pd.DataFrame) -> tuple[pd.DataFrame, Optional[str]]:
    """(the images still to score, the run id of the rows kept): all images and None unless
    --resume finds committed predictions."""
    if not settings.resume or not HadoopFiles(spark).exists(paths.predictions):
        return images, None
    committed = spark.read.schema(PREDICTIONS_SCHEMA).parquet(paths.predictions)
    runs = committed.groupBy("model", "weights_sha256", "run_id").count().collect()
    ours = (settings.model, settings.weights_source.sha256)
    others = [r for r in runs if (r["model"], r["weights_sha256"]) != ours]
    if others:
        found = ", ".join(f"{r['count']} rows of {r['model']} with weights {r['weights_sha256'][:12]}" for r in others)
        raise ResumeError(f"cannot resume {paths.root}: it holds {found}, not {settings.model} with weights "
                          f"{ours[1][:12]}; use --mode overwrite or another --output")
    done = committed.select("path").toPandas()["path"]
    doubled = done[done.duplicated()]
    if not doubled.empty:
        raise ResumeError(f"cannot resume {paths.root}: {doubled.nunique()} images have more than one row "
                          f"(e.g. {doubled.iloc[0]}); use --mode overwrite")
    unknown = done[~done.isin(images["path"])]
    if not unknown.empty:
        raise ResumeError(f"cannot resume {paths.root}: {len(unknown)} of its rows are for images not in this "
                          f"listing (e.g. {unknown.iloc[0]}); resume with the same --input and --limit")
    pending = images[~images["path"].isin(done)].reset_index(drop=True)
    log.info("resuming %s: %d images already have a row, %d to score", paths.root, len(done), len(pending))
    run_ids = sorted({r["run_id"] for r in runs})
    return pending, run_ids[0] if len(run_ids) == 1 else None


def chunks(images: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    """The images in pieces of `size`, each scored and committed by its own write."""
    for start in range(0, len(images), size):
        yield images.iloc[start:start + size]
