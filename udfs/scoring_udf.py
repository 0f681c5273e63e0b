"""The function Spark runs on executors: Arrow batches of paths in, prediction rows out.

Used with `DataFrame.mapInPandas(score_fn, SCORED_SCHEMA)`. The body stays small: find the
task's device, get this worker's cached predictor, and yield `predictor`'s output for each
batch. Reading, decoding and inference live in `udfs.predictor`.
"""

from __future__ import annotations

import gc
import resource
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import pandas as pd
import torch
from pyspark import SparkFiles, TaskContext
from pyspark.accumulators import Accumulator

from udfs.model import precision_name, task_device
from udfs.predictor import get_predictor
from udfs.settings import Settings
from udfs.task_log import process_identity

ScoreFn = Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]


def assigned_gpus(context: Optional[TaskContext]) -> list[str]:
    """The GPU addresses Spark's resource scheduling gave this task (empty without GPUs)."""
    if context is None:
        return []
    gpu = context.resources().get("gpu")
    return list(gpu.addresses) if gpu is not None else []


def keep_out_of_collections() -> None:
    """Move everything this worker holds now (torch, torchvision, pandas, the model: ~400,000
    objects) out of the garbage collector's reach for good (`gc.freeze`).

    PySpark's daemon runs a full `gc.collect()` in a reused worker after every task, and a full
    collection walks every tracked object: 0.18 s in a quiet process with these imports, and,
    seen with py-spy, about 0.4 s of a busy worker's time between two tasks (mobilenet_v3_small,
    2 cores). After the freeze it walks only what later tasks create. These objects live as long
    as the worker anyway; the collection just before the freeze (once per model build) keeps
    the build's garbage, such as the trace's, from being frozen with them."""
    gc.collect()
    gc.freeze()


def make_score_fn(settings: Settings, task_log: Optional[Accumulator] = None) -> ScoreFn:
    """The mapInPandas function for this run (closes over the settings and the task log)."""

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        started = time.time()
        context = TaskContext.get()
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        gpus = assigned_gpus(context)
        device = task_device(gpus)
        weights_file = Path(SparkFiles.get(settings.weights_source.file_name))
        building = time.time()
        predictor, built = get_predictor(settings, device, weights_file)
        build_seconds = time.time() - building
        if built:
            keep_out_of_collections()
        yield from predictor.predict_batches(batches)
        if task_log is not None:
            stats = predictor.stats
            task_log.add([{
                **process_identity(),
                "partition": context.partitionId() if context else None,
                "attempt": context.attemptNumber() if context else None,
                "gpu_addresses": gpus,
                "device": str(device),
                "precision": precision_name(predictor.autocast_dtype),
                "model_built": built,
                "model_build_seconds": round(build_seconds, 3) if built else 0.0,
                "images": stats.images,
                "errors": stats.errors,
                "s3_retries": stats.s3_retries.as_dict(),
                "model_seconds": round(stats.model_seconds, 4),
                "wait_seconds": round(stats.wait_seconds, 4),
                "torch_threads": torch.get_num_threads(),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "started": started,
                "finished": time.time(),
            }])

    return score
