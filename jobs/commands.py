"""The `report` and `compare` subcommands of `infer-dogs` (driver side, after a run).

    infer-dogs report RUN_DIR              rebuild RUN_DIR/report.html and RUN_DIR/charts/*.png
    infer-dogs compare RUN_A RUN_B         per-breed accuracy differences (printed, PNG, CSV)

`jobs.infer_dogs.main` hands over here only when the first argument is one of these names, so
`infer-dogs --input ...` and `spark-submit jobs/infer_dogs.py --input ...` are unchanged.
Local run directories are read with pyarrow, without Spark; other URIs (hdfs://, s3:// on
EMR, dbfs:/) through a Spark session (the one spark-submit configures, else local).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from jobs.cli import EXIT_USAGE, UsageError, _Parser
from jobs.report_data import RunData, RunDataError, read_local, read_with_spark
from udfs.settings import S3Options
from udfs.storage import is_local_uri, local_path

log = logging.getLogger("infer_dogs")
SUBCOMMANDS = ("report", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="infer-dogs", description="Look at finished runs (a run itself: infer-dogs --input ...).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    report = sub.add_parser("report", help="rebuild report.html and charts/*.png in a run directory",
                            description="Rebuild RUN_DIR/report.html (self-contained) and RUN_DIR/charts/*.png "
                                        "from the run's Parquet outputs and summary.json.")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run's --output (local path, file://, or any URI Spark reads)")
    s3 = report.add_argument_group("S3, for the misclassified thumbnails when the images are on S3")
    s3.add_argument("--s3-endpoint-url", default=None, help="custom S3 endpoint (MinIO, moto, a VPC endpoint)")
    s3.add_argument("--s3-anonymous", action="store_true", help="unsigned requests, for public buckets")
    s3.add_argument("--s3-region", default=None, help="S3 region (default: boto3's own resolution)")
    compare = sub.add_parser("compare", help="per-breed accuracy differences between two runs (B - A)",
                             description="Print and plot per-breed top-1/top-5 accuracy differences, B minus A.")
    compare.add_argument("run_a", metavar="RUN_A", help="the baseline run directory")
    compare.add_argument("run_b", metavar="RUN_B", help="the run compared with it")
    compare.add_argument("--output", default=None,
                         help="folder for compare_accuracy.png and .csv (default ./compare-<A run id>-vs-<B run id>)")
    compare.add_argument("--limit", type=int, default=None, help="print only the N largest changes")
    return parser


class _Readers:
    """Reads run directories; starts Spark only for a non-local one, once."""

    def __init__(self) -> None:
        self._spark = None

    def spark(self):
        if self._spark is None:
            from pyspark.sql import SparkSession

            self._spark = (SparkSession.builder.appName("infer-dogs-report")
                           .config("spark.ui.showConsoleProgress", "false").getOrCreate())
            self._spark.sparkContext.setLogLevel("WARN")
        return self._spark

    def read(self, uri: str, with_predictions: bool = True) -> RunData:
        if is_local_uri(uri):
            if not local_path(uri).is_dir():
                raise RunDataError(f"run directory not found: {uri}")
            return read_local(uri, with_predictions)
        return read_with_spark(self.spark(), uri, with_predictions=with_predictions)

    def close(self) -> None:
        if self._spark is not None:
            self._spark.stop()


def run_report(args: argparse.Namespace, readers: _Readers) -> int:
    from jobs.report import write_report

    data = readers.read(args.run_dir)
    s3 = S3Options(endpoint_url=args.s3_endpoint_url, anonymous=args.s3_anonymous, region=args.s3_region)
    uri = write_report(data, s3, None if is_local_uri(args.run_dir) else readers.spark())
    if data.summary.get("random_weights"):
        print("RANDOM WEIGHTS: this run's predictions and accuracy are meaningless (the report says so too).")
    print(f"report: {uri}")
    return 0


def run_compare(args: argparse.Namespace, readers: _Readers) -> int:
    from jobs.compare import compare_runs, format_comparison, write_comparison

    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    a = readers.read(args.run_a, with_predictions=False)
    b = readers.read(args.run_b, with_predictions=False)
    comparison = compare_runs(a, b)
    folder = Path(args.output or f"compare-{a.summary.get('run_id')}-vs-{b.summary.get('run_id')}")
    png, csv = write_comparison(comparison, folder)
    print(format_comparison(comparison, args.limit))
    print(f"\nchart: {png}\ntable: {csv}")
    return 0


def main(argv: Sequence[str]) -> int:
    """`infer-dogs report|compare ...`; exit codes as for a run (0 done, 2 bad arguments or run dir)."""
    readers = _Readers()
    try:
        args = build_parser().parse_args(list(argv))
        if args.command == "report":
            return run_report(args, readers)
        return run_compare(args, readers)
    except (UsageError, RunDataError) as exc:
        print(f"infer-dogs: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        readers.close()


def is_subcommand(argv: Optional[Sequence[str]]) -> bool:
    return bool(argv) and argv[0] in SUBCOMMANDS
