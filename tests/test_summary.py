"""The printed run summary (jobs/summary.py): one row per fact, the random-weights banner first."""

from __future__ import annotations

import pandas as pd

from jobs.summary import build_summary, format_per_class, format_summary, summary_rows
from tests.helpers import scoring_settings
from udfs.settings import WeightsSource


def make_summary(random: bool = False) -> dict:
    source = WeightsSource(kind="random" if random else "file", description="w.pt", sha256="ab" * 32,
                           file_name="w.pt", seed=1 if random else None)
    settings = scoring_settings(input="s3://b/dogs/", output="/runs/r1", model="resnet50").with_weights_source(source)
    settings = settings.with_run_id("20260101T000000Z-abcdef")
    totals = {"images": 1200, "scored": 1197, "errors": 3, "with_truth": 1197, "top1_accuracy": 0.8,
              "top5_accuracy": 0.95, "errors_by_kind": {"decode_error": 2, "not_found": 1}}
    records = [{"host": "h", "pid": 1, "executor_pid": 9, "device": "cpu", "precision": "fp32", "gpu_addresses": [],
                "model_built": True, "images": 1200, "started": 100.0, "finished": 160.0}]
    timings = {"listing": 1.25, "spark_start": 8.0, "weights": 0.5, "score_and_write_predictions": 62.0,
               "aggregate": 3.0, "report": 2.0}
    timings["total"] = sum(timings.values())
    return build_summary(settings, totals, {"listed": 1200, "skipped_non_image": 4}, records, timings, [],
                         {"version": "4.3.0"}, {"predictions": "/runs/r1/predictions", "report": "/runs/r1/report.html"})


def test_rows_cover_accuracy_images_errors_rates_time_and_outputs():
    rows = dict(summary_rows(make_summary()))
    assert rows["top-1 accuracy"] == "80.00% over 1,197 images with a known truth"
    assert rows["top-5 accuracy"] == "95.00%"
    assert rows["images"] == "1,200: 1,197 scored, 3 errors (4 non-image objects skipped)"
    assert rows["errors by kind"] == "decode_error 2, not_found 1"
    assert rows["devices"] == "cpu (fp32): 1 Python worker(s), 1 model build(s)"  # what ran, not what was asked
    assert rows["images/s"] == "20.0 inference, 15.64 end to end"
    assert rows["wall time"] == ("76.8 s: listing 1.2, Spark start 8.0, weights 0.5, scoring + writing predictions "
                                 "62.0, per-class aggregation 3.0, report 2.0 (first scoring task start to last end: "
                                 "60.0)")
    assert rows["report"] == "/runs/r1/report.html"


def test_model_rows_say_which_source_weights_and_preprocessing_ran():
    summary = make_summary()
    rows = dict(summary_rows(summary))
    assert rows["model"] == f"resnet50 (torchvision resnet50, 1000 classes), weights w.pt (sha256 {'ab' * 6})"
    # torchvision's ResNet50 DEFAULT (IMAGENET1K_V2) transform
    assert rows["preprocessing"] == ("resize 232 bilinear, centre crop 224, mean 0.485 0.456 0.406, "
                                     "std 0.229 0.224 0.225")
    assert summary["model_source"]["pretrained"] == "ResNet50_Weights.IMAGENET1K_V2"
    del summary["model_source"]  # a run written before model sources
    rows = dict(summary_rows(summary))
    assert rows["model"].startswith("resnet50, weights") and "preprocessing" not in rows


def test_printed_summary_is_an_aligned_table_with_the_banner_first_when_random():
    text = format_summary(make_summary(random=True))
    lines = text.splitlines()
    assert lines[0] == "!" * 100 and lines[1].startswith("RANDOM WEIGHTS") and lines[2] == "!" * 100
    assert lines[3].startswith("run ")
    columns = {len(line) - len(line[line.index("  "):].lstrip()) for line in lines[3:]}
    assert len(columns) == 1, "values start in one column"
    assert "RANDOM" not in format_summary(make_summary()).splitlines()[0]


def test_a_run_that_scored_nothing_has_no_rate():
    summary = make_summary()
    summary["images_per_s"] = {"inference": None, "end_to_end": 0.2}  # --resume with nothing left to score
    assert dict(summary_rows(summary))["images/s"] == "n/a inference, 0.2 end to end"


def test_confusion_counts_print_as_whole_numbers():
    """A struct column read back with a null in it can bring its counts as floats (9.0)."""
    table = pd.DataFrame({"wnid": ["n02085620", None], "label": ["Chihuahua", "cats"], "n_images": [10, 2],
                          "n_errors": [0, 0], "top1_accuracy": [0.1, None], "top5_accuracy": [0.5, None],
                          "mean_pred_prob": [0.3, 0.4],
                          "most_confused_with": [{"wnid": "n01491361", "label": "tiger shark", "count": 9.0}, None]})
    text = format_per_class(table)
    assert "tiger shark (9)" in text and "9.0" not in text
