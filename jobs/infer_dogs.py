"""infer-dogs: score a folder tree of images with a torchvision or timm model on Spark.

    spark-submit jobs/infer_dogs.py --input s3://bucket/dogs/Images/ --output /data/run1
    python -m jobs.infer_dogs ...        infer-dogs ...        (same flags; --help lists them)
    infer-dogs report RUN_DIR            infer-dogs compare RUN_A RUN_B     (jobs/commands.py)

`main()` reads as the run: parse and validate settings, list the images, start Spark, resolve
the weights, score the images on the executors and write the predictions, aggregate per class,
write the summary. Exit codes: 0 done, 1 the job failed, 2 bad arguments or input.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional, Sequence

try:
    from jobs.cli import EXIT_USAGE, UsageError, parse_settings, validate_model
except ModuleNotFoundError as missing:  # spark-submit puts jobs/ on sys.path, not the project root
    sys.exit(f"infer-dogs: error: cannot import the project ({missing}); install it with "
             "`pip install -e .` (or ship it with --py-files / spark.archives) before spark-submit")

from pyspark.sql import SparkSession

from jobs.commands import is_subcommand
from jobs.dry_run import dry_run
from jobs.listing import ListingError, list_images
from jobs.outputs import OutputExistsError, OutputNotWritableError, refuse_local_run_before_spark
from jobs.spark_session import GpuSchedulingError, start_spark
from jobs.summary import format_per_class, format_summary
from udfs.errors import WeightsError

log = logging.getLogger("infer_dogs")
EXIT_FAILED = 1
TORCH_SIDE = "jobs.run"  # the run after listing; imports torch (~3 s)


def import_in_background(name: str) -> Future:
    """Import module `name` on a thread; the future gives the module.

    Used for the torch side of the run while the main thread starts Spark, in a run with nothing
    to fetch before it (random weights, no --classes; others import it to fetch and check their
    weights and classes first, `jobs.run.prepare_weights`): the import is ~3 s of Python, Spark's
    start ~3 s of mostly JVM work. On 2 cores they overlap only in part
    (measured: the whole process 0.3-1.6 s shorter, Spark start + imports 4.1 s instead of
    3.4 s + the imports); `--help` and usage errors found before listing do not import torch at
    all (0.7 s instead of 5 s); dry runs import it for the model-name check (`validate_model`).
    Spark itself starts on the main thread, where PySpark installs its Ctrl-C handler that
    cancels running jobs."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="infer-dogs-import")
    future = pool.submit(importlib.import_module, name)
    pool.shutdown(wait=False)
    return future


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("py4j", "botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def configure_verbosity(verbose: int) -> None:
    """-v: our DEBUG log (Spark's level is set in start_spark); -vv: libraries' DEBUG too."""
    if verbose >= 1:
        for name in ("infer_dogs", "jobs", "udfs"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    if verbose >= 2:
        logging.getLogger().setLevel(logging.DEBUG)


def fail(spark: SparkSession, code: int, message: str) -> int:
    """Stop Spark first, so that the error comes after Spark's shutdown lines."""
    spark.stop()
    print(f"infer-dogs: error: {message}", file=sys.stderr)
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if is_subcommand(argv):  # infer-dogs report RUN_DIR | compare RUN_A RUN_B
        from jobs.commands import main as subcommand_main

        configure_logging(logging.WARNING)
        return subcommand_main(argv)
    configure_logging()
    started = time.perf_counter()
    try:
        settings = parse_settings(argv)
        configure_verbosity(settings.verbose)
        listing = list_images(settings)
        timings = {"listing": time.perf_counter() - started}
        if settings.dry_run:
            print(dry_run(validate_model(settings), listing))
            return 0
        refuse_local_run_before_spark(settings.input, settings.output, settings.mode, settings.resume)
        if settings.random_weights is None or settings.classes:  # weights or classes to fetch and check:
            # one that cannot be had or does not fit must end the run before Spark starts (fetching
            # takes longer than the import this forgoes overlapping with Spark's start)
            step = time.perf_counter()
            settings = importlib.import_module(TORCH_SIDE).prepare_weights(settings)
            timings["weights"] = time.perf_counter() - step
    except (UsageError, ListingError, OutputExistsError, WeightsError) as exc:
        print(f"infer-dogs: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    log.info("listed %d images (%d non-image objects skipped)", len(listing.images), listing.skipped_non_image)

    step = time.perf_counter()
    torch_side = import_in_background(TORCH_SIDE)
    spark = start_spark(settings)
    try:
        run_job = torch_side.result().run_job  # imported while Spark started
        settings = validate_model(settings)
        timings["spark_start"] = time.perf_counter() - step
        summary = run_job(spark, settings, listing, timings)
        per_class = spark.read.parquet(summary["outputs"]["per_class_accuracy"]).toPandas()
    except (UsageError, OutputExistsError, OutputNotWritableError, WeightsError, GpuSchedulingError) as exc:
        return fail(spark, EXIT_USAGE, str(exc))
    except Exception as exc:  # the job failed: say so in one line, keep the traceback in the log
        log.exception("the job failed")
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        return fail(spark, EXIT_FAILED, f"the job failed: {type(exc).__name__}: {first_line}")
    spark.stop()
    print(format_summary(summary))
    print()
    print(format_per_class(per_class))
    return 0


def exit_process(code: int) -> None:
    """End the process without Python's interpreter teardown, which takes ~1 s once torch and
    torchvision are loaded (measured here: 0.5 s for torch alone, 0.9 s with torchvision; 1.1 s
    of every run between the job's last line and its exit). Everything the job writes went
    through Spark's JVM, which was stopped, or through files closed before this point; the log
    and stdout are flushed here. On Databricks the driver's Python process belongs to the
    platform, so there the job exits normally."""
    if "DATABRICKS_RUNTIME_VERSION" in os.environ:
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def entry() -> None:
    """The command line (`infer-dogs`, `python -m jobs.infer_dogs`, spark-submit's script)."""
    exit_process(main())


if __name__ == "__main__":
    entry()
