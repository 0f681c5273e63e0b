"""Spark session helpers: the --gpu-stage-only resource profile and its flags (the cluster behaviour
itself is in tests/test_cluster.py)."""

from __future__ import annotations

import pytest

from jobs.cli import UsageError, parse_settings
from jobs.spark_session import ARROW_BATCH_KEY, GpuSchedulingError, configure_session, scoring_profile


def settings(tmp_path, *flags):
    return parse_settings(["--input", str(tmp_path), "--output", str(tmp_path / "out"), *flags])


@pytest.mark.parametrize("flags, message", [
    (["--gpu-task-amount", "0.5"], "needs --gpu-stage-only"),
    (["--gpu-stage-only", "--gpu-task-amount", "1.5"], "at most 1 or a whole number"),
    (["--gpu-stage-only", "--gpu-task-amount", "0"], "at most 1 or a whole number"),
])
def test_gpu_task_amount_follows_sparks_rule(tmp_path, flags, message):
    with pytest.raises(UsageError, match=message):
        settings(tmp_path, *flags)


@pytest.mark.parametrize("amount", ["0.25", "0.7", "1", "2"])
def test_gpu_task_amounts_spark_accepts(tmp_path, amount):
    assert settings(tmp_path, "--gpu-stage-only", "--gpu-task-amount", amount).gpu_task_amount == float(amount)


def test_no_profile_without_the_flag(spark, tmp_path):
    assert scoring_profile(spark, settings(tmp_path)) is None


def test_local_mode_has_no_stage_level_scheduling(spark, tmp_path):
    with pytest.raises(GpuSchedulingError, match="needs a cluster manager"):
        scoring_profile(spark, settings(tmp_path, "--gpu-stage-only"))


def submitted(monkeypatch, spark, value):
    """As if spark-submit (or a cluster's Spark config) had set the Arrow batch size."""
    conf = spark.sparkContext.getConf().set(ARROW_BATCH_KEY, value)
    monkeypatch.setattr(spark.sparkContext, "getConf", lambda: conf)


def test_arrow_batch_size_default_flag_and_submitted(spark, tmp_path, monkeypatch):
    try:
        assert configure_session(spark, settings(tmp_path)).arrow_batch_size == 256
        assert spark.conf.get(ARROW_BATCH_KEY) == "256"
        submitted(monkeypatch, spark, "64")
        assert configure_session(spark, settings(tmp_path)).arrow_batch_size == 64  # the cluster's value is kept
        assert spark.conf.get(ARROW_BATCH_KEY) == "64"
        assert configure_session(spark, settings(tmp_path, "--arrow-batch-size", "32")).arrow_batch_size == 32
        assert spark.conf.get(ARROW_BATCH_KEY) == "32"  # the job's own flag wins
        submitted(monkeypatch, spark, "lots")
        with pytest.raises(UsageError, match="maxRecordsPerBatch=lots was submitted"):
            configure_session(spark, settings(tmp_path))
    finally:
        spark.conf.set(ARROW_BATCH_KEY, "256")


def test_arrow_batch_size_flag_must_be_positive(tmp_path):
    with pytest.raises(UsageError, match="--arrow-batch-size must be at least 1"):
        settings(tmp_path, "--arrow-batch-size", "0")
