"""Helpers shared by the tests: running the job in-process and reading its outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from jobs.cli import parse_settings
from jobs.infer_dogs import run_job
from jobs.listing import list_images


def run_in_process(spark, argv: Sequence[str]) -> dict:
    """Parse `argv` like the CLI, list, and run the job on the test session; returns the summary."""
    settings = parse_settings(list(argv))
    return run_job(spark, settings, list_images(settings))


def read_predictions(output: Path) -> pd.DataFrame:
    return pd.read_parquet(output / "predictions").sort_values("path", ignore_index=True)


def read_per_class(output: Path) -> pd.DataFrame:
    return pd.read_parquet(output / "per_class_accuracy")


def read_summary(output: Path) -> dict:
    return json.loads((output / "summary.json").read_text())
