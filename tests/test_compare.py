"""`infer-dogs compare RUN_A RUN_B` (jobs/compare.py) on two real runs.

Run A is the shared `report_run`; run B scores the first half of the sample with seeded random
weights, so B has fewer breeds, other counts and random weights: every warning should show.
"""

from __future__ import annotations

import pandas as pd
import pytest

from jobs.compare import compare_runs
from jobs.infer_dogs import main
from jobs.report_data import read_local
from tests.helpers import read_per_class, run_in_process
from tests.report_html import assert_valid_png


@pytest.fixture(scope="module")
def run_b(spark, sample_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "run_b"
    run_in_process(spark, ["--input", str(sample_images.images_dir), "--output", str(out), "--model",
                           "mobilenet_v3_small", "--random-weights", "3", "--limit", str(len(sample_images.files()) // 2 - 5), "--no-report",
                           "--progress", "off"])
    return out


def test_compare_prints_plots_and_tabulates_per_breed_differences(report_run, run_b, tmp_path, capsys):
    run_a, _, _ = report_run
    assert not (run_b / "report.html").exists()  # --no-report
    folder = tmp_path / "cmp"
    assert main(["compare", str(run_a), str(run_b), "--output", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "run B used RANDOM weights" in printed
    assert "appear in only one run" in printed
    assert "overall top-1" in printed and "B - A" in printed
    assert_valid_png((folder / "compare_accuracy.png").read_bytes())

    table = pd.read_csv(folder / "compare_accuracy.csv")
    a, b = read_per_class(run_a).set_index("wnid"), read_per_class(run_b).set_index("wnid")
    assert set(table["wnid"]) == set(a.index) | set(b.index)
    for row in table.itertuples():
        if row.wnid in a.index and row.wnid in b.index:
            expected = b.loc[row.wnid, "top1_accuracy"] - a.loc[row.wnid, "top1_accuracy"]
            assert row.delta_top1 == pytest.approx(expected)
            assert (row.n_scored_a, row.n_scored_b) == (a.loc[row.wnid, "n_scored"], b.loc[row.wnid, "n_scored"])
        else:
            assert pd.isna(row.delta_top1)
    shared = table[table["delta_top1"].notna()]
    assert list(shared["delta_top1"].abs()) == sorted(shared["delta_top1"].abs(), reverse=True)


def test_a_run_compared_with_itself_has_no_differences_and_no_warnings(report_run):
    run_a, summary, _ = report_run
    data = read_local(run_a, with_predictions=False)
    comparison = compare_runs(data, data)
    assert comparison.warnings == []
    assert (comparison.table["delta_top1"].fillna(0) == 0).all()
    assert comparison.overall["top1"] == {"a": summary["accuracy"]["top1"], "b": summary["accuracy"]["top1"],
                                          "delta": 0.0}


def test_compare_refuses_a_folder_that_is_not_a_run(report_run, tmp_path, capsys):
    run_a, _, _ = report_run
    assert main(["compare", str(run_a), str(tmp_path)]) == 2
    assert "summary.json is missing" in capsys.readouterr().err
