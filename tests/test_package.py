"""scripts/package.sh --wheel-only: what Databricks and Kubernetes images install (the packed
environment itself needs torch from an index, so it is built by hand, see docs/deploy.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

from tests.conftest import PROJECT_ROOT


def test_wheel_requirements_and_entry_point(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(["bash", str(PROJECT_ROOT / "scripts" / "package.sh"), "--wheel-only", "--dist", str(dist)],
                   check=True, capture_output=True, text=True, env={**os.environ, "BUILD_PYTHON": sys.executable})
    wheel, = dist.glob("infer_dogs-*-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("jobs/infer_dogs.py", "jobs/cli.py", "udfs/scoring_udf.py", "udfs/predictor.py"):
        assert module in names
    assert not any(name.startswith("tests/") for name in names)
    requirements = (dist / "requirements-cluster.txt").read_text().splitlines()
    assert not any(line.lower().startswith("pyspark") for line in requirements)  # the cluster's Spark has it
    assert any(line.startswith("torch==") for line in requirements)
    assert (dist / "infer_dogs.py").read_text() == (PROJECT_ROOT / "jobs" / "infer_dogs.py").read_text()
    for script in ("getGpusResources.sh", "bootstrap.sh"):
        assert (dist / script).stat().st_mode & 0o100
