"""scripts/bench.py's arithmetic and table: the combined ceiling (with an S3 endpoint's read
ceiling), and the job's ratios bracketed by ceilings and job runs before and after (the runs
themselves take minutes: bench.py is run by hand, its figures are in the README)."""

from __future__ import annotations

import pytest

from scripts.bench import combined_ceiling, format_table


def test_combined_ceiling_shares_cores_on_cpu_and_takes_the_slower_stage_on_gpu():
    assert combined_ceiling(600.0, 300.0, "cpu") == 200.0
    assert combined_ceiling(6000.0, 3000.0, "cuda") == 3000.0
    assert combined_ceiling(600.0, 300.0, "cpu", read_rate=150.0) == 150.0  # an endpoint slower than the job
    assert combined_ceiling(600.0, 300.0, "cpu", read_rate=1000.0) == pytest.approx(200.0)
    assert combined_ceiling(6000.0, 3000.0, "cuda", read_rate=2000.0) == 2000.0


def job_figures(rate: float, after_build: float, build_s: float, wall_s: float, images: int) -> dict:
    """One job run as `bench.run_job` reports it (the fields format_table reads)."""
    return {"inference_images_per_s": rate, "inference_images_per_s_after_model_build": after_build,
            "timing_s": {"model_build_max": build_s}, "wall_s": wall_s, "images": images}


def bench_result(model: str, images: int, precision: str, model_rate: float, batch: int, decode_rate: float,
                 combined: float, job: dict, **rest) -> dict:
    """What bench.py's main() hands format_table for a CPU run on 2 cores, plus `rest`."""
    best = {"images_per_s": model_rate, "processes": 2, "threads": 1, "batch": batch, "channels_last": True,
            "graph": "torchscript", "precision": precision}
    return {"model": model, "images": images, "cores": 2, "device": "cpu", "precision": precision,
            "machine": {"gpu": None}, "model_ceiling": {"best": best},
            "decode_ceiling": {"images_per_s": decode_rate, "processes": 2}, "combined_ceiling_images_per_s": combined,
            "job_local": job, **rest}


def test_table_shows_the_ceilings_after_the_job_and_both_ratios():
    job = job_figures(180.0, 190.0, 0.9, 30.0, 2040)
    result = bench_result(
        "mobilenet_v3_small", 2040, "fp32", 600.0, 8, 300.0, 200.0, job,
        ceilings_after_job={"model_images_per_s": 540.0, "decode_images_per_s": 270.0,
                            "combined_images_per_s": 180.0},
        s3_read_ceiling={"images_per_s": 120.0, "processes": 2, "threads": 4},
        combined_ceiling_s3_images_per_s=120.0,
        job_s3={**job, "inference_images_per_s": 90.0},
        ratios={"job_local_inference_vs_combined_ceiling": 0.9,
                "job_local_inference_vs_combined_ceiling_after_job": 1.0,
                "job_s3_inference_vs_combined_ceiling": 0.45, "job_s3_inference_vs_combined_ceiling_s3": 0.75},
    )
    lines = format_table(result).splitlines()
    assert any("s3 read ceiling" in line and "2 processes x 4 threads" in line for line in lines)
    assert any("combined ceiling, from s3" in line and "min(combined, read)" in line for line in lines)
    s3_job = next(line for line in lines if "job (s3, fp32) inference" in line)
    assert "0.45 x combined ceiling (0.75 x the one from s3)" in s3_job
    again = next(line for line in lines if "again after the job" in line)
    assert "180.0 images/s" in again and "model 540.0, decode 270.0 (-10%" in again
    inference = next(line for line in lines if "job (local, fp32) inference" in line)
    assert "0.90 x combined ceiling (1.00 x the one after)" in inference


def test_table_brackets_the_baselines_with_the_job_run_before_and_after_them():
    job = job_figures(41.0, 44.0, 1.3, 40.0, 840)
    result = bench_result(
        "resnet50", 840, "bf16", 46.0, 4, 650.0, 43.0, job,
        job_local_fp32={**job, "wall_s": 50.0},
        job_local_again={**job, "wall_s": 44.0}, job_local_fp32_again={**job, "wall_s": 55.0},
        tutorial={"wall_s": 110.0}, databricks={"wall_s": 100.0}, predict_batch_udf={"wall_s": 60.0},
        combined_ceiling_fp32_images_per_s=24.0,
        ratios={"job_local_inference_vs_combined_ceiling": 0.95,
                "job_local_fp32_inference_vs_combined_ceiling": 0.9,
                "tutorial_wall_vs_job_wall": 2.75, "tutorial_wall_vs_job_wall_again": 2.5,
                "tutorial_wall_vs_job_fp32_wall": 2.2, "tutorial_wall_vs_job_fp32_wall_again": 2.0,
                "databricks_wall_vs_job_wall": 2.5, "databricks_wall_vs_job_wall_again": 100 / 44,
                "databricks_wall_vs_job_fp32_wall": 2.0, "databricks_wall_vs_job_fp32_wall_again": 100 / 55,
                "predict_batch_udf_wall_vs_job_wall": 1.5, "predict_batch_udf_wall_vs_job_wall_again": 60 / 44,
                "predict_batch_udf_wall_vs_job_fp32_wall": 1.2, "predict_batch_udf_wall_vs_job_fp32_wall_again": 60 / 55},
    )
    lines = format_table(result).splitlines()
    tutorial = next(line for line in lines if "tutorial whole process" in line)
    assert tutorial.endswith("job is 2.75 x (bf16), 2.20 x (fp32) faster; run again after: 2.50 x (bf16), 2.00 x (fp32)")
    assert any("job (local, fp32) again" in line and "55.0 s" in line for line in lines)
    spark_own = next(line for line in lines if "spark predict_batch_udf whole process" in line)
    assert "60.0 s" in spark_own and spark_own.endswith("job is 1.50 x (bf16), 1.20 x (fp32) faster; "
                                                         "run again after: 1.36 x (bf16), 1.09 x (fp32)")


def test_the_job_runs_with_its_own_batch_unless_told_and_the_table_says_which():
    from types import SimpleNamespace

    from scripts.bench import job_batch

    assert job_batch(SimpleNamespace(job_args=[], device="cpu")) == "8 (its default on cpu)"
    assert job_batch(SimpleNamespace(job_args=["--decode-threads=2"], device="cuda")) == "256 (its default on cuda)"
    assert job_batch(SimpleNamespace(job_args=["--batch-size=16"], device="cpu")) == "16"
    assert job_batch(SimpleNamespace(job_args=["--batch-size", "32"], device="cpu")) == "32"
    assert job_batch(SimpleNamespace(job_args=["--batch", "4"], device="cpu")) == "4"  # as the job's parser reads it
    result = bench_result("mobilenet_v3_small", 2040, "fp32", 600.0, 32, 300.0, 200.0,
                          job_figures(180.0, 190.0, 0.9, 30.0, 2040), job_batch="8 (its default on cpu)",
                          ratios={"job_local_inference_vs_combined_ceiling": 0.9})
    header = format_table(result).splitlines()[0]
    assert header == "infer-dogs bench: mobilenet_v3_small, 2040 images, 2 cores, cpu; the job's batch 8 (its default on cpu)"


def test_table_shows_the_faulty_s3_run_against_the_clean_runs_through_the_same_proxy():
    job = job_figures(180.0, 190.0, 0.9, 30.0, 480)
    retries = {"reads": {"requests_retried": 256, "throttling_responses": 64, "images_retried": 180,
                         "images_given_up": 0},
               "listing": {"requests_retried": 3, "throttling_responses": 1, "pages_retried": 3}}
    faulty = {**job, "wall_s": 40.0, "listed": 480, "scored": 480, "errors": 0, "s3_retries": retries,
              "proxy": {"requests": 750,
                        "faults": {"internal_error": 65, "slow_down": 65, "reset": 65, "cut_body": 64}}}
    result = bench_result(
        "mobilenet_v3_small", 480, "fp32", 600.0, 8, 300.0, 200.0, job, s3_fault_rate=0.35,
        job_s3_proxy={**job, "wall_s": 34.0}, job_s3_faults=faulty, job_s3_proxy_again={**job, "wall_s": 36.0},
        ratios={"job_local_inference_vs_combined_ceiling": 0.9, "job_s3_faults_wall_vs_clean_wall": 40 / 35})
    lines = format_table(result).splitlines()
    clean = next(line for line in lines if "job (s3 via proxy) clean" in line)
    assert "34.0 s" in clean and clean.endswith("again after: 36.0 s")
    line = next(line for line in lines if "job (s3, 35 % faults)" in line)
    assert "40.0 s" in line and line.endswith("1.14 x the clean runs' mean; 480 of 480 listed images scored, 0 errors")
    retried = next(line for line in lines if line.strip().startswith("retries"))
    assert retried.split()[1] == "259"
    assert retried.endswith("requests sent again (256 GETs for 180 images, 3 listing requests), 65 SlowDown; "
                            "0 images given up; the proxy failed 259 of 750 requests")
