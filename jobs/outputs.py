"""Where a run's outputs go and how they are written (driver side).

A run directory holds `predictions/` and `per_class_accuracy/` (Parquet, written by Spark with
its commit protocol) and `summary.json`, written last and atomically (temporary file, then
rename): a run directory without `summary.json` is incomplete. Predictions are appended in
chunks, each committed by its own Spark job (`jobs/resume.py`), and checked to hold exactly one
row per listed image before anything is aggregated. File operations go through
Hadoop's FileSystem API from the driver's JVM, so the same code serves local paths, HDFS,
`s3://` on EMR, `s3a://` and `dbfs:/` wherever the cluster has the connector.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from py4j.protocol import Py4JJavaError
from pyspark.sql import DataFrame, SparkSession

WRITE_CHECK = "_infer-dogs-write-check"


class OutputExistsError(Exception):
    """OUTPUT already holds a run and --mode is error (exit code 2)."""


class OutputNotWritableError(Exception):
    """OUTPUT cannot be created or written (a file in its way, no permission): exit code 2, found
    before any image is scored."""


class IncompleteOutputError(Exception):
    """The written predictions are not exactly one row per listed image (the job fails: exit 1)."""


@dataclass(frozen=True)
class RunPaths:
    root: str

    def _join(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    @property
    def predictions(self) -> str:
        return self._join("predictions")

    @property
    def per_class(self) -> str:
        return self._join("per_class_accuracy")

    @property
    def summary(self) -> str:
        return self._join("summary.json")

    @property
    def report(self) -> str:
        return self._join("report.html")

    @property
    def charts(self) -> str:
        """The folder of the report's PNG charts, beside report.html."""
        return self._join("charts")

    def entries(self) -> tuple[str, ...]:
        return (self.predictions, self.per_class, self.summary, self.report, self.charts)

    def present(self, exists: Callable[[str], bool]) -> list[str]:
        """The entries that `exists` finds, summary.json first (cleared first: from then on the
        directory reads as incomplete)."""
        return sorted((uri for uri in self.entries() if exists(uri)), key=lambda uri: uri != self.summary)


class HadoopFiles:
    """A few FileSystem calls through the driver's JVM."""

    def __init__(self, spark: SparkSession):
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _fs_path(self, uri: str):
        path = self._jvm.org.apache.hadoop.fs.Path(uri)
        return path.getFileSystem(self._conf), path

    def exists(self, uri: str) -> bool:
        fs, path = self._fs_path(uri)
        return bool(fs.exists(path))

    def delete(self, uri: str) -> None:
        fs, path = self._fs_path(uri)
        if fs.exists(path):
            fs.delete(path, True)

    def read_text(self, uri: str) -> str:
        fs, path = self._fs_path(uri)
        stream = fs.open(path)
        try:
            reader = self._jvm.java.io.BufferedReader(self._jvm.java.io.InputStreamReader(stream, "UTF-8"))
            lines = []
            line = reader.readLine()
            while line is not None:
                lines.append(line)
                line = reader.readLine()
            return "\n".join(lines)
        finally:
            stream.close()

    def upload(self, local_file: str, uri: str) -> None:
        """Copy a local file to `uri` (replacing it), through the filesystem of `uri`."""
        fs, path = self._fs_path(uri)
        source = self._jvm.org.apache.hadoop.fs.Path("file://" + local_file)
        fs.copyFromLocalFile(False, True, source, path)

    def check_writable(self, uri: str) -> None:
        """Create the folder `uri` and write and remove one empty file in it, or say in one line why
        not. Hadoop's local filesystem answers a folder it cannot make with `false`, others throw."""
        fs, path = self._fs_path(uri)
        probe = self._jvm.org.apache.hadoop.fs.Path(path, WRITE_CHECK)
        try:
            if not fs.mkdirs(path):
                raise OutputNotWritableError(f"cannot create --output {uri}: a parent is not a writable folder")
            fs.create(probe, True).close()
            fs.delete(probe, False)
        except Py4JJavaError as exc:
            cause = exc.java_exception.toString().splitlines()[0]
            raise OutputNotWritableError(f"cannot write to --output {uri}: {cause}") from None

    def write_text_atomically(self, uri: str, text: str) -> None:
        fs, path = self._fs_path(uri)
        temporary = self._jvm.org.apache.hadoop.fs.Path(path.getParent(), f"_{path.getName()}.tmp")
        stream = fs.create(temporary, True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()
        if fs.exists(path):
            fs.delete(path, False)
        if not fs.rename(temporary, path):
            raise OSError(f"could not rename {temporary} to {uri}")


def prepare_output(spark: SparkSession, paths: RunPaths, mode: str, resume: bool = False) -> None:
    """Refuse (mode error) or clear (mode overwrite) a run already in OUTPUT, and check that OUTPUT
    can be written before anything is scored.

    With `resume`, keep its committed predictions and clear everything derived from them, and
    the uncommitted `_temporary/` of a killed write (a later job commit would merge it in).
    `summary.json` goes first: from then on the directory reads as incomplete."""
    files = HadoopFiles(spark)
    files.check_writable(paths.root)
    existing = paths.present(files.exists)
    if resume:
        for uri in existing + [f"{paths.predictions}/_temporary"]:
            if uri != paths.predictions:
                files.delete(uri)
        return
    if not existing:
        return
    if mode == "error":
        refuse_existing_run(paths, existing)
    for uri in existing:
        files.delete(uri)


def refuse_existing_run(paths: RunPaths, existing: list[str]) -> None:
    """OutputExistsError naming what OUTPUT holds (`existing`, a non-empty part of paths.entries())."""
    incomplete = paths.summary not in existing
    raise OutputExistsError(
        f"{paths.root} already holds {'an incomplete' if incomplete else 'a'} run "
        f"({', '.join(e.rsplit('/', 1)[1] for e in existing)}); "
        + ("use --resume to finish it, " if incomplete else "")
        + "use --mode overwrite to replace it or choose another --output"
    )


def refuse_local_run_before_spark(input_uri: str, output: str, mode: str, resume: bool) -> None:
    """The same refusal as `prepare_output`'s, made before Spark starts (10-15 s sooner) where
    OUTPUT is on this machine: a `file:` URI, or a plain path beside a local INPUT (on a cluster a
    plain path may name the cluster's filesystem instead; there `prepare_output` answers)."""
    from udfs.storage import is_local_uri, is_s3_uri, local_path

    local = output.startswith("file:") or (not is_s3_uri(input_uri) and is_local_uri(output))
    if mode != "error" or resume or not local:
        return
    paths = RunPaths(output)
    existing = paths.present(lambda uri: local_path(uri).exists())
    if existing:
        refuse_existing_run(paths, existing)


def write_parquet(frame: DataFrame, uri: str) -> None:
    frame.write.mode("error").parquet(uri)


def append_parquet(frame: DataFrame, uri: str) -> None:
    """One chunk: Spark's commit protocol moves its files into `uri` at the job's commit; a write
    killed before that leaves only `_temporary/`, which readers skip."""
    frame.write.mode("append").parquet(uri)


def check_one_row_per_image(totals: dict, n_images: int) -> None:
    """Nothing lost, nothing doubled: as many rows and distinct paths as listed images
    (`totals` from `jobs.per_class.overall_counts`)."""
    if totals["images"] != n_images or totals["paths"] != n_images:
        raise IncompleteOutputError(
            f"predictions hold {totals['images']} rows for {totals['paths']} distinct images, "
            f"but {n_images} images were listed"
        )


def write_summary(spark: SparkSession, paths: RunPaths, summary: dict[str, Any]) -> None:
    HadoopFiles(spark).write_text_atomically(paths.summary, json.dumps(summary, indent=2, sort_keys=False) + "\n")
