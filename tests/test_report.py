"""The end-of-run report (jobs/report.py, jobs/report_data.py, jobs/charts.py) from a real run.

One real run of the job (the `report_run` fixture, tests/report_runs.py) on the sample photos
with mobilenet_v3_small and seeded test weights. Accuracy from such weights means nothing: the
tests only check that the report shows what the Parquet outputs hold.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jobs.infer_dogs import main
from jobs.report_data import (
    MAX_PREDICTION_ROWS,
    confidence_bins,
    expected_calibration_error,
    pick_mistakes,
    read_local,
    read_with_spark,
    top_confusions,
)
from tests.helpers import read_per_class, read_predictions, read_summary
from tests.report_html import assert_valid_png, decode_data_uri, parse_report
CHART_NAMES = {"accuracy_by_breed.png", "confusions.png", "confidence_histogram.png", "reliability_diagram.png",
               "misclassified.png"}


@pytest.fixture(scope="module")
def parsed(report_run):
    out, _, _ = report_run
    return parse_report((out / "report.html").read_text(encoding="utf-8"))


def test_report_is_written_at_the_end_of_the_run(report_run, parsed):
    out, summary, _ = report_run
    assert summary["outputs"]["report"] == f"{out}/report.html"
    assert read_summary(out)["outputs"]["report"] == summary["outputs"]["report"]
    assert summary["timing_s"]["report"] > 0
    assert {p.name for p in (out / "charts").iterdir()} == CHART_NAMES
    assert "random-weights" not in parsed.ids  # real (if useless) weights: no banner
    summary_rows = {row[0].text: row[1].text for row in parsed.tables["summary"]}
    assert summary_rows["images"].startswith(f"{summary['counts']['images']:,}:")
    assert summary_rows["predictions"] == summary["outputs"]["predictions"]


def test_every_chart_is_a_valid_png_embedded_and_beside_the_page(report_run, parsed):
    out, _, _ = report_run
    charts = [img for img in parsed.images if "chart" in img.get("class", "")]
    assert {Path(img["data-file"]).name for img in charts} == CHART_NAMES - {"misclassified.png"}
    for img in charts:
        media, data = decode_data_uri(img["src"])
        assert media == "image/png"
        assert data == (out / img["data-file"]).read_bytes()  # the page embeds the file beside it
        assert_valid_png(data)
    for name in CHART_NAMES:
        assert_valid_png((out / "charts" / name).read_bytes())
    assert not [img for img in parsed.images if not img["src"].startswith("data:")], "report must be self-contained"


def test_per_breed_table_matches_the_parquet(report_run, parsed):
    out, _, _ = report_run
    per_class = read_per_class(out).set_index("wnid")
    rows = parsed.tables["per-breed"]
    assert len(rows) == len(per_class)
    shown = []
    for row, attrs in zip(rows, parsed.row_attrs["per-breed"]):
        wnid = attrs["data-wnid"]
        expected = per_class.loc[wnid]
        label, wnid_cell, images, scored, errors, top1, top5, mean_prob, confused = row
        assert (label.text, wnid_cell.text) == (expected["label"], wnid)
        assert int(images.attrs["data-value"]) == expected["n_images"]
        assert int(scored.attrs["data-value"]) == expected["n_scored"]
        assert int(errors.attrs["data-value"]) == expected["n_errors"]
        assert float(top1.attrs["data-value"]) == pytest.approx(expected["top1_accuracy"])
        assert top1.text == f"{100 * expected['top1_accuracy']:.1f}%"
        assert float(top5.attrs["data-value"]) == pytest.approx(expected["top5_accuracy"])
        assert float(mean_prob.attrs["data-value"]) == pytest.approx(expected["mean_pred_prob"])
        most = expected["most_confused_with"]
        assert confused.text == (f"{most['label']} ({most['count']})" if most is not None else "")
        shown.append(expected["top1_accuracy"])
    assert shown == sorted(shown), "worst breeds first"


def test_confusions_table_matches_the_parquet(report_run, parsed):
    out, _, _ = report_run
    predictions = read_predictions(out)
    wrong = predictions[(predictions["correct"] == False) & predictions["error"].isna()]  # noqa: E712
    assert len(wrong) > 0 and (predictions["correct"] == True).any(), "test weights should give both"  # noqa: E712
    expected = wrong.groupby(["wnid", "pred_wnid"]).size()
    rows = parsed.tables["confusions"]
    assert 0 < len(rows) <= 15
    counts = []
    for row, attrs in zip(rows, parsed.row_attrs["confusions"]):
        count = int(row[2].attrs["data-value"])
        assert count == expected[(attrs["data-wnid"], attrs["data-pred-wnid"])]
        class_scored = predictions[(predictions["wnid"] == attrs["data-wnid"]) & predictions["correct"].notna()]
        assert float(row[3].attrs["data-value"]) == pytest.approx(count / len(class_scored))
        counts.append(count)
    assert counts == sorted(counts, reverse=True)
    assert counts[0] == expected.max()  # the most frequent confusion is shown first


def test_calibration_numbers_match_the_parquet(report_run, parsed):
    out, _, _ = report_run
    predictions = read_predictions(out)
    scored = predictions[predictions["error"].isna()]
    prob = scored["pred_prob"].astype(float).to_numpy()
    correct = scored["correct"].astype(bool).to_numpy()
    bins = np.minimum((prob * 10).astype(int), 9)
    ece = sum((bins == b).sum() / len(prob) * abs(correct[bins == b].mean() - prob[bins == b].mean())
              for b in range(10) if (bins == b).any())
    assert parsed.ids["ece"] == f"{100 * ece:.1f} percentage points"


def test_misclassified_grid_shows_the_most_confident_mistakes(report_run, parsed):
    out, _, _ = report_run
    predictions = read_predictions(out)
    wrong = predictions[predictions["correct"] == False]  # noqa: E712
    thumbnails = [img for img in parsed.images if "chart" not in img.get("class", "")]
    assert len(thumbnails) == min(24, len(wrong)) == len(parsed.figure_captions)
    by_path = wrong.set_index("path")
    for img, caption in zip(thumbnails, parsed.figure_captions):
        row = by_path.loc[img["title"]]
        prob = 100 * row["pred_prob"]
        shown = f"{prob:.1f}%" if 99 < prob < 100 else f"{prob:.0f}%"
        assert caption == f"true: {row['label']}\npred: {row['pred_label']} ({shown})"
        media, data = decode_data_uri(img["src"])
        assert media == "image/jpeg" and data[:3] == b"\xff\xd8\xff"
    shown = [float(by_path.loc[img["title"], "pred_prob"]) for img in thumbnails]
    assert shown == sorted(shown, reverse=True)


def test_progress_was_logged_while_scoring(report_run):
    _, summary, messages = report_run
    total = summary["counts"]["images"]
    lines = [m for m in messages if m.startswith("scoring:")]
    assert lines, "a progress line every --progress-interval seconds, and one at the end"
    assert lines[-1].startswith(f"scoring: {total}/{total} images (100.0%)")
    assert lines[-1].endswith("(scoring finished)")
    assert "errors 0" in lines[-1] and "0 running" in lines[-1]


def test_spark_and_local_readers_agree(spark, report_run):
    out, summary, _ = report_run
    local = read_local(out)
    remote = read_with_spark(spark, str(out), summary)
    pd.testing.assert_frame_equal(local.predictions, remote.predictions)
    pd.testing.assert_frame_equal(local.per_class.drop(columns="most_confused_with"),
                                  remote.per_class.drop(columns="most_confused_with"), check_dtype=False)
    assert list(local.per_class["most_confused_with"]) == list(remote.per_class["most_confused_with"])
    assert local.predictions_total == remote.predictions_total == summary["counts"]["images"]
    assert not local.sampled and MAX_PREDICTION_ROWS > local.predictions_total


def test_report_subcommand_rebuilds_it_and_shouts_random_weights(report_run, tmp_path, capsys):
    out, _, _ = report_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("report.html", "charts"))
    summary = json.loads((copy / "summary.json").read_text())
    summary.update(random_weights=True, warning="RANDOM WEIGHTS: test warning")
    (copy / "summary.json").write_text(json.dumps(summary))
    assert main(["report", str(copy)]) == 0
    assert f"report: {copy}/report.html" in capsys.readouterr().out
    report = parse_report((copy / "report.html").read_text(encoding="utf-8"))
    assert report.first_body_id == "random-weights"  # the first thing on the page
    assert "RANDOM WEIGHTS" in report.ids["random-weights"] and "MEANINGLESS" in report.ids["random-weights"]
    assert {p.name for p in (copy / "charts").iterdir()} == CHART_NAMES
    assert "big" in (copy / "report.html").read_text().split('id="random-weights"')[1][:80]


def test_report_subcommand_refuses_an_incomplete_run(tmp_path, capsys):
    (tmp_path / "predictions").mkdir()
    assert main(["report", str(tmp_path)]) == 2
    assert "summary.json is missing" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere")]) == 2


# The tables on a hand-made frame: errors excluded, unknown truth kept apart, bins and caps.

def _frame(rows):
    columns = ["path", "image_id", "wnid", "label", "pred_wnid", "pred_label", "pred_prob", "correct", "error_kind"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["correct"] = frame["correct"].astype("boolean")
    return frame


HAND_MADE = _frame([
    ("a1", "a1", "n1", "A", "n2", "B", 0.95, False, None),
    ("a2", "a2", "n1", "A", "n2", "B", 0.90, False, None),
    ("a3", "a3", "n1", "A", "n1", "A", 0.55, True, None),
    ("a4", "a4", "n1", "A", "n3", "C", 0.85, False, None),
    ("b1", "b1", "n2", "B", "n1", "A", 0.15, False, None),
    ("b2", "b2", "n2", "B", "n2", "B", 1.00, True, None),
    ("x1", "x1", None, "cats", "n2", "B", 0.50, None, None),
    ("e1", "e1", "n1", "A", None, None, None, None, "decode_error"),
])


def test_confusions_count_only_scored_images_with_a_truth():
    table = top_confusions(HAND_MADE)
    assert table[["wnid", "pred_wnid", "count"]].values.tolist() == [["n1", "n2", 2], ["n1", "n3", 1],
                                                                      ["n2", "n1", 1]]
    assert table["share_of_class"].tolist() == pytest.approx([0.5, 0.25, 0.5])


def test_confusions_of_classes_without_wnids():
    """A --classes list of plain names (cats, dogs): truths without a wnid still have their share."""
    names = HAND_MADE.assign(wnid=None, pred_wnid=None)
    names = names[names["label"] != "cats"]
    table = top_confusions(names)
    assert table[["label", "pred_label", "count"]].values.tolist() == [["A", "B", 2], ["A", "C", 1], ["B", "A", 1]]
    assert table["share_of_class"].tolist() == pytest.approx([0.5, 0.25, 0.5])


def test_confidence_bins_and_calibration_error():
    bins = confidence_bins(HAND_MADE, bins=10)
    assert bins["n"].sum() == 7  # the error row has no prediction
    assert bins["n_no_truth"].sum() == 1
    top = bins.iloc[9]  # 0.90 and 0.95 (wrong), 1.00 (right: the top edge belongs to the last bin)
    assert (top["n_correct"], top["n_wrong"]) == (1, 2)
    assert top["accuracy"] == pytest.approx(1 / 3) and top["mean_confidence"] == pytest.approx(0.95)
    known = HAND_MADE[HAND_MADE["correct"].notna() & HAND_MADE["pred_prob"].notna()]
    prob, right = known["pred_prob"].to_numpy(float), known["correct"].to_numpy(bool)
    index = np.minimum((prob * 10).astype(int), 9)
    expected = sum((index == b).sum() / len(prob) * abs(right[index == b].mean() - prob[index == b].mean())
                   for b in set(index))
    assert expected_calibration_error(bins) == pytest.approx(expected)


def test_mistakes_most_confident_first_with_every_class_getting_a_turn():
    picked = pick_mistakes(HAND_MADE, limit=3, per_class=1)
    assert picked["path"].tolist() == ["a1", "a2", "b1"]  # a1 and b1 first, then the next most confident
    assert pick_mistakes(HAND_MADE, limit=2, per_class=1)["path"].tolist() == ["a1", "b1"]


def test_charts_without_truth_are_still_valid_pngs(tmp_path):
    from jobs import charts

    no_truth = HAND_MADE.assign(wnid=None, correct=pd.array([None] * len(HAND_MADE), dtype="boolean"))
    per_class = pd.DataFrame({"wnid": [None], "label": ["cats"], "n_images": [3], "n_scored": [3],
                              "top1_accuracy": [None], "top5_accuracy": [None]})
    bins = confidence_bins(no_truth, 10)
    paths = [
        charts.accuracy_by_breed(per_class, tmp_path / "a.png", random_weights=True),
        charts.confusions(top_confusions(no_truth), tmp_path / "c.png"),
        charts.confidence_histogram(bins, tmp_path / "h.png"),
        charts.reliability_diagram(bins, tmp_path / "r.png", expected_calibration_error(bins)),
        charts.mistakes_grid([], tmp_path / "m.png"),
        charts.mistakes_grid([(np.full((90, 120, 3), 200, np.uint8), "true: a very long breed name indeed\npred: b (51%)"),
                              (None, "true: c\npred: d (50%)")], tmp_path / "g.png", random_weights=True, columns=6),
    ]
    for path in paths:
        assert_valid_png(path.read_bytes())
    assert expected_calibration_error(bins) is None


def test_subcommands_only_when_named_first():
    from jobs.commands import is_subcommand

    assert is_subcommand(["report", "/runs/r1"]) and is_subcommand(["compare", "a", "b"])
    assert not is_subcommand(["--input", "report", "--output", "compare"]) and not is_subcommand([])


def test_report_for_a_remote_run_dir_is_copied_through_hadoop(spark, report_run, tmp_path, monkeypatch):
    """hdfs://, s3:// and dbfs:/ run directories: built locally, then copied with Hadoop's FileSystem."""
    import jobs.report as report
    from udfs.settings import S3Options

    out, summary, _ = report_run
    copy = tmp_path / "remote"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("report.html", "charts"))
    monkeypatch.setattr(report, "is_local_uri", lambda uri: False)  # file:// through the Hadoop path
    data = read_with_spark(spark, f"file://{copy}", summary)
    assert report.write_report(data, S3Options(), spark) == f"file://{copy}/report.html"
    assert parse_report((copy / "report.html").read_text(encoding="utf-8")).tables["per-breed"]
    assert {p.name for p in (copy / "charts").iterdir()} >= CHART_NAMES


class _StubHadoopFiles:
    """Stands in for jobs.outputs.HadoopFiles: keeps what is uploaded, by destination URI."""

    uploaded: dict[str, bytes] = {}

    def __init__(self, spark) -> None:
        pass

    def upload(self, local_file: str, uri: str) -> None:
        self.uploaded[uri] = Path(local_file).read_bytes()


@pytest.mark.parametrize("root", ["dbfs:/runs/r1", "hdfs://namenode:8020/runs/r1", "s3://bucket/runs/r1"])
def test_remote_run_dirs_are_never_taken_for_local_folders(report_run, root, tmp_path, monkeypatch, capsys):
    """The end of a run and the `report` command with a dbfs:/, hdfs:// or s3:// run directory
    build the report aside and upload it there, never into a folder named after the URI. Only the
    filesystem calls are stubbed (reading the run's Parquet, uploading); what counts as local is
    udfs.storage.is_local_uri itself."""
    import dataclasses

    import jobs.commands as commands
    import jobs.outputs as outputs
    import jobs.report_data as report_data
    from jobs.outputs import RunPaths
    from jobs.report import write_run_report
    from udfs.settings import S3Options

    out, summary, _ = report_run
    data = dataclasses.replace(read_local(out), root=root)

    def read_remote(spark, uri, summary=None, with_predictions=True):
        assert uri == root
        return data

    monkeypatch.setattr(outputs, "HadoopFiles", _StubHadoopFiles)
    monkeypatch.setattr(_StubHadoopFiles, "uploaded", {})
    monkeypatch.setattr(report_data, "read_with_spark", read_remote)  # what write_run_report reads with
    monkeypatch.setattr(commands, "read_with_spark", read_remote)
    session = object()  # handed on as the Spark session; the stubs never use it
    monkeypatch.setattr(commands._Readers, "spark", lambda self: session)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    expected = {f"{root}/report.html"} | {f"{root}/charts/{name}" for name in CHART_NAMES}

    assert write_run_report(session, S3Options(), RunPaths(root), summary) == f"{root}/report.html"
    assert set(_StubHadoopFiles.uploaded) == expected
    assert parse_report(_StubHadoopFiles.uploaded[f"{root}/report.html"].decode("utf-8")).tables["per-breed"]

    _StubHadoopFiles.uploaded.clear()
    assert main(["report", root]) == 0
    assert f"report: {root}/report.html" in capsys.readouterr().out
    assert set(_StubHadoopFiles.uploaded) == expected
    assert list(cwd.iterdir()) == []  # nothing built in a relative folder named `dbfs:` or the like


def test_a_thumbnail_s3_cannot_serve_is_left_out_not_a_failed_report():
    """Still failing after udfs.s3_retry's attempts: no thumbnail, a warning, the report goes on."""
    from jobs.report import load_thumbnail
    from tests.conftest import free_port
    from udfs.settings import S3Options

    nothing_there = S3Options(endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=2)
    assert load_thumbnail("s3://dogs-test/dogs/Images/a.jpg", nothing_there) is None
