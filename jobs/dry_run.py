"""`--dry-run`: what a run would score, without scoring anything.

The input is listed exactly as a run lists it; the plan printed is the images per class and the
number of scoring tasks. The task count follows `jobs.spark_session.scoring_partitions`:
min(images, slots x --tasks-per-slot), where slots is Spark's default parallelism. It is
computed without starting a SparkContext or running a Spark job: the configuration comes from
the Spark launcher (SparkConf after the JVM gateway is up: spark-submit's --master and --conf,
spark-defaults.conf), and slots from the master URL the way Spark derives its default
parallelism: `spark.default.parallelism` when set, else the cores of `local[N]`, `local[*]` or
`local-cluster[N,C,M]`, else `spark.executor.instances` x `spark.executor.cores` for a
cluster (at least 2). With dynamic allocation, or when those are not set, the slots are only
known once executors register, and the plan says so.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Optional

import pandas as pd

from jobs.listing import Listing, left_out_text, retried_text, truth_unknown_to_model
from udfs.settings import Settings

LOCAL_MASTER = re.compile(r"^local(?:\[(\*|\d+)(?:\s*,\s*\d+)?\])?$")
LOCAL_CLUSTER_MASTER = re.compile(r"^local-cluster\[\s*(\d+)\s*,\s*(\d+)\s*,\s*\d+\s*\]$")


@dataclass(frozen=True)
class Slots:
    count: Optional[int]  # None: known only when executors register
    how: str  # where the number comes from, in words


def slots_for(master: str, conf_get: Callable[[str], Optional[str]]) -> Slots:
    """Spark's default parallelism for `master` and this configuration, without starting Spark."""
    explicit = conf_get("spark.default.parallelism")
    if explicit:
        return Slots(int(explicit), f"spark.default.parallelism = {explicit}")
    local = LOCAL_MASTER.match(master)
    if local:
        threads = local.group(1)
        if threads is None:
            return Slots(1, f"master {master}: 1 thread")
        if threads == "*":
            cores = os.cpu_count() or 1
            return Slots(cores, f"master {master}: {cores} cores on this machine")
        return Slots(int(threads), f"master {master}: {threads} threads")
    cluster = LOCAL_CLUSTER_MASTER.match(master)
    if cluster:
        workers, cores = int(cluster.group(1)), int(cluster.group(2))
        return Slots(max(2, workers * cores), f"master {master}: {workers} workers x {cores} cores")
    if (conf_get("spark.dynamicAllocation.enabled") or "false").lower() == "true":
        return Slots(None, f"master {master} with dynamic allocation: slots depend on the executors "
                           "registered when scoring starts")
    instances, cores = conf_get("spark.executor.instances"), conf_get("spark.executor.cores")
    if instances and cores:
        total = int(instances) * int(cores)
        return Slots(max(2, total), f"master {master}: {instances} executors x {cores} cores, "
                                    "once all have registered")
    return Slots(None, f"master {master}: slots depend on the executors registered when scoring starts "
                       "(set spark.executor.instances and spark.executor.cores to know in advance)")


def planned_tasks(slots: Optional[int], n_images: int, tasks_per_slot: int) -> Optional[int]:
    """The scoring partitions a run would use (jobs.spark_session.scoring_partitions's rule)."""
    if slots is None:
        return None
    return max(1, min(n_images, max(1, slots) * tasks_per_slot))


def launcher_conf(settings: Settings) -> tuple[str, Callable[[str], Optional[str]]]:
    """Master and configuration as `start_spark` would see them (launches the JVM gateway only)."""
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()
    conf = SparkConf()
    master = conf.get("spark.master", None)
    if master is None or (settings.master and "PYSPARK_GATEWAY_PORT" not in os.environ):
        master = settings.master or "local[*]"  # not under spark-submit: --master decides, as in start_spark
    return master, lambda key: conf.get(key, None)


def class_counts(images: pd.DataFrame) -> pd.DataFrame:
    """Images and bytes per true class, by label."""
    table = (
        images.assign(wnid=images["wnid"].fillna(""))
        .groupby(["wnid", "label"], dropna=False)
        .agg(images=("path", "size"), mib=("size_bytes", lambda s: s.fillna(0).sum() / 2**20))
        .reset_index()
    )
    return table.sort_values(["label", "wnid"], key=lambda column: column.str.lower(), ignore_index=True)


def format_plan(settings: Settings, listing: Listing, master: str, slots: Slots) -> str:
    images = listing.images
    n = len(images)
    tasks = planned_tasks(slots.count, n, settings.tasks_per_slot)
    counts = class_counts(images)
    lines = [
        "DRY RUN: nothing is scored and nothing is written.",
        f"input {settings.input}",
        f"images {n:,} in {len(counts):,} classes ({listing.total_images:,} listed"
        + (f", --limit {settings.limit}" if settings.limit else "")
        + f"; {left_out_text(listing.skipped_non_image, listing.skipped_in_output, listing.skipped_bad_name)})",
    ]
    retries = listing.s3_retries
    if retries and retries["requests_retried"]:  # udfs.s3_retry's counts for the listing's pages
        lines.append("S3 listing: " + retried_text(retries["requests_retried"], retries["retried"], "pages",
                                                   retries["throttled"]))
    if settings.model_source is not None:  # the model's classes, by wnid else by exact name (--classes too)
        unknown_truths = truth_unknown_to_model(settings.model_source.classes, images)
        unknown = int(images["wnid"].fillna(images["label"]).isin(unknown_truths).sum())
        why = f"none of the model's {settings.model_source.num_classes} classes"
    else:
        unknown, why = int(images["wnid"].isna().sum()), "folder not <wnid>-<Breed>, not in --label-map"
    if unknown:
        lines.append(f"without a known truth ({why}): {unknown:,} images")
    if tasks is None:
        lines.append(f"scoring tasks: min({n:,} images, slots x {settings.tasks_per_slot} per slot); {slots.how}")
    else:
        lines.append(f"scoring tasks: {tasks:,} = min({n:,} images, {slots.count} slots x {settings.tasks_per_slot} "
                     f"per slot), about {n / tasks:,.0f} images each; {slots.how}")
    batch = settings.batch_size or "auto (8 on CPU, 256 on CUDA)"
    lines.append(f"model {settings.model}, batch size {batch}, output would go to {settings.output}")
    lines.append("")
    view = counts.rename(columns={"mib": "MiB"})
    lines.append(view.to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    return "\n".join(lines)


def dry_run(settings: Settings, listing: Listing) -> str:
    """The plan text for this listing (launches the JVM gateway to read the Spark config)."""
    master, conf_get = launcher_conf(settings)
    return format_plan(settings, listing, master, slots_for(master, conf_get))
