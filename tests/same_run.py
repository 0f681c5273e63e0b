"""Row-by-row comparison of two runs' outputs (tests only): same images, each exactly once, same
predictions and error rows, same per-class table and summary counts; run ids may differ.

Probabilities may differ by float rounding when the runs batched the images differently
(different chunks or partitions); two classes within that rounding may then swap places.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tests.helpers import read_per_class, read_predictions, read_summary

EXACT_COLUMNS = ["image_id", "path", "wnid", "label", "error", "error_kind", "model", "weights_sha256"]


def assert_same_ranking(a, b, atol: float, what: str) -> None:
    """Same top-k classes with the same probabilities, up to near-ties swapping places."""
    ia, ib = list(a.top_k_indices), list(b.top_k_indices)
    pa, pb = np.asarray(a.top_k_probs, dtype=float), np.asarray(b.top_k_probs, dtype=float)
    np.testing.assert_allclose(pa, pb, atol=atol, err_msg=what)
    for k, (x, y) in enumerate(zip(ia, ib)):
        if x != y:
            neighbours = [pa[j] for j in (k - 1, k + 1) if 0 <= j < len(pa)]
            assert any(abs(pa[k] - n) <= 2 * atol for n in neighbours), (what, ia, ib, pa)


def assert_same_predictions(a: pd.DataFrame, b: pd.DataFrame, atol: float = 1e-5) -> None:
    assert a["path"].is_unique and b["path"].is_unique
    assert a["path"].tolist() == b["path"].tolist()
    pd.testing.assert_frame_equal(a[EXACT_COLUMNS], b[EXACT_COLUMNS])
    for row_a, row_b in zip(a.itertuples(), b.itertuples()):
        if isinstance(row_a.error, str):
            continue
        assert_same_ranking(row_a, row_b, atol, row_a.path)
        if row_a.pred_index == row_b.pred_index:
            assert row_a.correct == row_b.correct and row_a.pred_wnid == row_b.pred_wnid, row_a.path


def assert_same_outputs(out_a: Path, out_b: Path, atol: float = 1e-5) -> None:
    """predictions/, per_class_accuracy/ and summary.json of two run directories agree."""
    assert_same_predictions(read_predictions(out_a), read_predictions(out_b), atol)
    per_a = read_per_class(out_a).sort_values(["wnid", "label"], ignore_index=True)
    per_b = read_per_class(out_b).sort_values(["wnid", "label"], ignore_index=True)
    pd.testing.assert_frame_equal(per_a.drop(columns="mean_pred_prob"), per_b.drop(columns="mean_pred_prob"))
    np.testing.assert_allclose(per_a["mean_pred_prob"], per_b["mean_pred_prob"], atol=atol)
    summary_a, summary_b = read_summary(out_a), read_summary(out_b)
    for key in ("images", "scored", "errors", "with_truth", "listed", "skipped_non_image"):
        assert summary_a["counts"][key] == summary_b["counts"][key], key
    assert summary_a["errors_by_kind"] == summary_b["errors_by_kind"]
    assert summary_a["accuracy"] == summary_b["accuracy"]
