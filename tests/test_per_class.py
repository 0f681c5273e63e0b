"""Per-class aggregation and run totals on a small hand-made predictions table."""

from __future__ import annotations

import pytest

from jobs.outputs import IncompleteOutputError, check_one_row_per_image
from jobs.per_class import overall_counts, per_class_accuracy
from udfs.schema import PER_CLASS_SCHEMA, PREDICTIONS_SCHEMA


def row(path, wnid, label, pred_index=None, pred_wnid=None, correct=None, top5=None, prob=None, error_kind=None):
    return {
        "image_id": path, "path": path, "wnid": wnid, "label": label, "pred_index": pred_index,
        "pred_wnid": pred_wnid, "pred_label": f"class {pred_index}" if pred_index is not None else None,
        "pred_prob": prob, "top_k_indices": [pred_index] if pred_index is not None else None,
        "top_k_probs": [prob] if prob is not None else None, "correct": correct, "top5_correct": top5,
        "error": "DecodeError: bad" if error_kind else None, "error_kind": error_kind,
        "model": "m", "weights_sha256": "s", "run_id": "r",
    }


@pytest.fixture
def predictions(spark):
    rows = [
        row("a1", "n1", "A", 1, "n1", True, True, 0.9),
        row("a2", "n1", "A", 2, "n2", False, True, 0.5),
        row("a3", "n1", "A", 3, "n3", False, False, 0.3),
        row("a4", "n1", "A", 2, "n2", False, True, 0.4),
        row("a5", "n1", "A", error_kind="decode_error"),
        row("b1", "n2", "B", 2, "n2", True, True, 0.8),
        row("c1", None, "cats", 7, "n7", None, None, 0.6),
    ]
    return spark.createDataFrame(rows, schema=PREDICTIONS_SCHEMA)


def test_per_class_table(predictions):
    table = {r["label"]: r.asDict(recursive=True) for r in per_class_accuracy(predictions).collect()}
    assert table["A"] == {
        "wnid": "n1", "label": "A", "n_images": 5, "n_scored": 4, "n_errors": 1,
        "top1_accuracy": 0.25, "top5_accuracy": 0.75, "mean_pred_prob": pytest.approx(0.525),
        "most_confused_with": {"wnid": "n2", "label": "class 2", "count": 2},
    }
    assert table["B"]["top1_accuracy"] == 1.0 and table["B"]["most_confused_with"] is None
    # no truth: scored, counted, accuracy null
    assert table["cats"]["wnid"] is None and table["cats"]["n_images"] == 1
    assert table["cats"]["top1_accuracy"] is None and table["cats"]["top5_accuracy"] is None
    assert table["cats"]["mean_pred_prob"] == pytest.approx(0.6)


def test_per_class_schema(predictions):
    assert per_class_accuracy(predictions).schema.simpleString() == PER_CLASS_SCHEMA.simpleString()


def test_confusion_ties_go_to_the_lower_class_index(spark):
    rows = [row("x1", "n1", "A", 9, "n9", False, False, 0.5), row("x2", "n1", "A", 4, "n4", False, False, 0.5)]
    table = per_class_accuracy(spark.createDataFrame(rows, schema=PREDICTIONS_SCHEMA)).first()
    assert table["most_confused_with"]["wnid"] == "n4"


def test_overall_counts(predictions):
    totals = overall_counts(predictions)
    assert totals["images"] == 7 and totals["paths"] == 7 and totals["scored"] == 6 and totals["errors"] == 1
    assert totals["with_truth"] == 5
    assert totals["top1_accuracy"] == pytest.approx(2 / 5)
    assert totals["top5_accuracy"] == pytest.approx(4 / 5)
    assert totals["errors_by_kind"] == {"decode_error": 1}


def test_one_row_per_image_check_counts_rows_and_distinct_paths(spark, predictions):
    check_one_row_per_image(overall_counts(predictions), 7)
    doubled = predictions.union(predictions.where("path = 'a1'"))  # a1 twice
    swapped = doubled.where("path != 'b1'")  # a1 twice, b1 lost: still 7 rows
    for frame, message in ((doubled, "8 rows for 7 distinct"), (swapped, "7 rows for 6 distinct"),
                           (predictions.where("path != 'c1'"), "6 rows for 6 distinct")):
        with pytest.raises(IncompleteOutputError, match=message):
            check_one_row_per_image(overall_counts(frame), 7)


def test_per_class_table_is_one_sorted_file(spark, predictions, tmp_path):
    from jobs.outputs import write_parquet

    write_parquet(per_class_accuracy(predictions), str(tmp_path / "pc"))
    assert len(list((tmp_path / "pc").glob("*.parquet"))) == 1
    import pandas as pd

    table = pd.read_parquet(tmp_path / "pc")
    assert table["label"].tolist() == ["A", "B", "cats"]  # by wnid, classes without one last
