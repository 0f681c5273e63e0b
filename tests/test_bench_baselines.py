"""scripts/bench_baselines.py: each baseline scores every image (the Spark ones on the tests' session,
the tutorial as bench.py runs it); Spark's predict_batch_udf gives what plain torchvision gives (it
preprocesses with the weights' own transforms, as the job does), so that the bench compares the job
with a working pipeline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from jobs.sample_images import EXIF_ORIENTATION
from scripts import bench_baselines
from tests.conftest import PROJECT_ROOT
from tests.reference import make_spread_weights, model_from_file, reference_probabilities

MODEL = "mobilenet_v3_small"
BASELINES = PROJECT_ROOT / "scripts" / "bench_baselines.py"


@pytest.fixture(scope="module")
def few_images(sample_images, tmp_path_factory) -> list[Path]:
    """A dozen JPEGs from two class folders, linked into a tree of their own."""
    root = tmp_path_factory.mktemp("baseline-images")
    files = [f for f in sample_images.files() if f.suffix == ".jpg"]
    chosen = [f for f in files if f.parent.name in sorted({f.parent.name for f in files})[:2]][:12]
    links = []
    for file in chosen:
        link = root / file.parent.name / file.name
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(file)
        links.append(link)
    return links


@pytest.fixture(scope="module")
def weights(few_images, tmp_path_factory) -> Path:
    return make_spread_weights(MODEL, 3, few_images, tmp_path_factory.mktemp("baseline-weights") / "w.pt")


def spark_baseline(spark, name: str, few_images: list[Path], weights: Path, output: Path) -> pd.DataFrame:
    """The baseline on the tests' session (bench.py runs each under spark-submit, as `main` does:
    a subprocess here cost ~40 s of JVM and torch imports per baseline on two cores)."""
    pattern = getattr(bench_baselines, name.replace("-", "_"))
    try:
        pattern(spark, str(few_images[0].parents[1]), str(output), MODEL, str(weights))
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")  # the Databricks pattern sets it
    return pd.read_parquet(output)


@pytest.mark.slow
def test_predict_batch_udf_baseline_gives_the_reference_predictions(spark, few_images, weights, tmp_path):
    rows = spark_baseline(spark, "predict-batch-udf", few_images, weights, tmp_path / "out")
    assert sorted(Path(p.removeprefix("file:")).name for p in rows["path"]) == sorted(f.name for f in few_images)
    upright = [f for f in few_images if Image.open(f).getexif().get(EXIF_ORIENTATION, 1) == 1]  # it ignores EXIF
    assert upright
    reference = reference_probabilities(model_from_file(MODEL, weights), MODEL, upright)
    by_name = {Path(p).name: prediction for p, prediction in zip(rows["path"], rows["prediction"])}
    for file in upright:
        probs = reference[str(file)]
        assert by_name[file.name]["pred_index"] == int(probs.argmax())
        assert by_name[file.name]["pred_prob"] == pytest.approx(float(probs.max()), abs=1e-5)


@pytest.mark.slow
def test_databricks_baseline_scores_every_image(spark, few_images, weights, tmp_path):
    rows = spark_baseline(spark, "databricks", few_images, weights, tmp_path / "out")
    assert len(rows) == len(few_images)
    for index, prob in rows["prediction"]:
        assert index == int(index) and 0 <= index < 1000 and 0 < prob <= 1


@pytest.mark.slow
def test_tutorial_baseline_runs_on_every_image(few_images, weights, tmp_path):
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(str(f) for f in few_images))
    result = subprocess.run([sys.executable, str(BASELINES), "tutorial", str(listing), MODEL, str(weights),
                             "--workers", "2"], capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]  # it checks that no image was lost
