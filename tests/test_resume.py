"""Killed tasks, a killed driver, `--resume` and `--mode`: every image ends with exactly one row,
and the final tables equal an uninterrupted run's, row by row.

The kills run the real job in a subprocess through tests/jobs_with_faults.py (test-only hooks
that patch the job in that process; nothing in the production path); `--resume` and the
`--mode` checks run in-process on the test session.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli import UsageError, parse_settings
from jobs.outputs import OutputExistsError
from jobs.resume import ResumeError
from tests.conftest import PROJECT_ROOT, TEST_SECRET
from tests.helpers import read_predictions, read_summary, run_in_process
from tests.reference import make_spread_weights
from tests.same_run import assert_same_outputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = "mobilenet_v3_small"
BREEDS, PER_BREED = 4, 6
N_IMAGES = BREEDS * PER_BREED
COMMIT_EVERY = 4
SUBPROCESS_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def images_dir(sample_images, tmp_path_factory) -> Path:
    """24 photos, six from each of four breeds."""
    root = tmp_path_factory.mktemp("resume") / "Images"
    folders = sorted({f.parent for f in sample_images.files()})[:BREEDS]
    for folder in folders:
        (root / folder.name).mkdir(parents=True)
        for file in sorted(folder.iterdir())[:PER_BREED]:
            shutil.copy(file, root / folder.name / file.name)
    return root


@pytest.fixture(scope="module")
def weights(images_dir, tmp_path_factory) -> Path:
    return make_spread_weights(MODEL, 31, sorted(images_dir.rglob("*.jpg")), tmp_path_factory.mktemp("w") / "w.pt")


def job_args(images_dir: Path, out: Path, weights: Path, *extra: str) -> list[str]:
    return ["--input", str(images_dir), "--output", str(out), "--model", MODEL, "--weights", str(weights),
            "--batch-size", "4", "--arrow-batch-size", "2", "--no-report", *extra]


@pytest.fixture(scope="module")
def clean_run(spark, images_dir, weights, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "run"
    run_in_process(spark, job_args(images_dir, out, weights))
    return out


def run_with_faults(hooks: list[str], args: list[str]) -> tuple[int, str]:
    """The job in a subprocess with tests/jobs_with_faults.py hooks; (exit status, all output)."""
    process = subprocess.Popen([sys.executable, "tests/jobs_with_faults.py", *hooks, "--", *args],
                               cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        try:  # the JVM and Python workers of a killed driver: the group we started
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return process.returncode, output


@pytest.mark.slow
def test_killed_task_attempts_are_retried_and_every_image_appears_once(clean_run, images_dir, weights, tmp_path):
    """The first attempts of two of the four scoring tasks die after handing Spark some rows: one
    by SIGKILL of its Python worker, one by an exception. local[2,4] allows four attempts."""
    markers, out = tmp_path / "markers", tmp_path / "run"
    markers.mkdir()
    code, output = run_with_faults(["--fail-first-attempt", str(markers)],
                                   job_args(images_dir, out, weights, "--master", "local[2,4]", "--tasks-per-slot", "2"))
    assert code == 0, output[-4000:]
    assert sorted(p.name for p in markers.iterdir()) == ["partition-0", "partition-1"]
    assert "Python worker exited unexpectedly" in output and "injected failure in partition 1" in output
    assert_same_outputs(clean_run, out)
    summary = read_summary(out)
    assert sum(w["tasks"] for w in summary["workers"]) == 4  # 2 slots x 2 tasks per slot; successful attempts only
    assert sum(w["images"] for w in summary["workers"]) == N_IMAGES
    assert TEST_SECRET not in output and TEST_SECRET not in json.dumps(summary)


@pytest.mark.slow
def test_killed_driver_then_resume_equals_an_uninterrupted_run(spark, clean_run, images_dir, weights, tmp_path):
    out = tmp_path / "run"
    code, output = run_with_faults(["--kill-driver-after-chunks", "2"],
                                   job_args(images_dir, out, weights, "--commit-every", str(COMMIT_EVERY)))
    assert code == -signal.SIGKILL, output[-4000:]
    assert not (out / "summary.json").exists()  # clearly incomplete
    committed = pd.read_parquet(out / "predictions")  # committed chunks only (_temporary/ is skipped)
    assert committed["path"].is_unique
    assert 2 * COMMIT_EVERY <= len(committed) < N_IMAGES
    assert committed["run_id"].nunique() == 1

    with pytest.raises(OutputExistsError, match="--resume"):  # --mode error names the way out
        run_in_process(spark, job_args(images_dir, out, weights))

    summary = run_in_process(spark, job_args(images_dir, out, weights, "--resume"))
    assert_same_outputs(clean_run, out)
    predictions = read_predictions(out)
    assert set(predictions["run_id"]) == set(committed["run_id"])  # the run goes on under its id
    assert summary["counts"]["kept_from_earlier_attempt"] == len(committed)
    assert sum(w["images"] for w in summary["workers"]) == N_IMAGES - len(committed)
    assert not (out / "predictions" / "_temporary").exists()


def copy_rows(rows: pd.DataFrame, folder: Path, name: str, like: Path) -> None:
    """Write `rows` as one Parquet file with the Arrow schema of the job's files under `like`."""
    schema = pq.read_schema(next(like.glob("part-*.parquet")))
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(rows, schema=schema, preserve_index=False), folder / name)


def test_resume_keeps_committed_rows_and_drops_uncommitted_ones(spark, clean_run, images_dir, weights, tmp_path):
    """A simulated partial run: some committed rows, and a killed write's `_temporary/` holding a
    task's finished file (a later job commit would merge it in, doubling rows) with wrong values."""
    out = tmp_path / "run"
    clean = read_predictions(clean_run).assign(run_id="earlier-run")
    copy_rows(clean.iloc[:10], out / "predictions", "part-00000-committed.parquet", clean_run / "predictions")
    stale = clean.iloc[5:15].assign(pred_index=0, pred_prob=1.0).astype({"pred_index": "int32", "pred_prob": "float32"})
    copy_rows(stale, out / "predictions" / "_temporary" / "0" / "task_000_m_000001", "part-00001-stale.parquet",
              clean_run / "predictions")

    summary = run_in_process(spark, job_args(images_dir, out, weights, "--resume"))
    assert_same_outputs(clean_run, out)
    assert set(read_predictions(out)["run_id"]) == {"earlier-run"}
    assert summary["counts"]["kept_from_earlier_attempt"] == 10


def test_resume_refuses_rows_of_other_weights(spark, clean_run, images_dir, weights, tmp_path):
    out = tmp_path / "run"
    other = read_predictions(clean_run).iloc[:5].assign(weights_sha256="0" * 64)
    copy_rows(other, out / "predictions", "part-00000.parquet", clean_run / "predictions")
    with pytest.raises(ResumeError, match="5 rows of mobilenet_v3_small with weights 000000000000"):
        run_in_process(spark, job_args(images_dir, out, weights, "--resume"))
    assert len(pd.read_parquet(out / "predictions")) == 5  # nothing touched


def test_mode_error_refuses_and_overwrite_replaces(spark, clean_run, images_dir, weights, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(clean_run, out)
    with pytest.raises(OutputExistsError, match="already holds a run") as refused:
        run_in_process(spark, job_args(images_dir, out, weights))
    assert "--resume" not in str(refused.value)  # a complete run has nothing to resume
    junk = read_predictions(clean_run).iloc[:3].assign(image_id="junk")
    copy_rows(junk, out / "predictions", "part-99999-junk.parquet", clean_run / "predictions")

    run_in_process(spark, job_args(images_dir, out, weights, "--mode", "overwrite"))
    assert_same_outputs(clean_run, out)
    written = [p for p in out.rglob("*") if p.is_file() and "summary.json" not in p.name]
    summary_time = (out / "summary.json").stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= summary_time for p in written)  # summary.json last
    assert not list(out.glob("_summary.json*"))


def test_resume_and_overwrite_exclude_each_other(images_dir, tmp_path):
    with pytest.raises(UsageError, match="exclude each other"):
        parse_settings(["--input", str(images_dir), "--output", str(tmp_path), "--resume", "--mode", "overwrite"])
