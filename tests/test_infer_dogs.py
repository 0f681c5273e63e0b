"""End to end: the job's predictions equal a plain torchvision reference, row by row."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import SHARED_CLASS_INDEX
from tests.helpers import read_per_class, read_predictions, read_summary, run_in_process
from tests.reference import make_spread_weights, model_from_file, reference_probabilities, seeded_model
from udfs.labels import imagenet_wnids

SEED = 7
TIE = 1e-5  # two classes this close in the reference may swap places under channels_last


def class_wnids() -> list[str]:
    if SHARED_CLASS_INDEX.is_file():
        index = json.loads(SHARED_CLASS_INDEX.read_text())
        return [index[str(i)][0] for i in range(1000)]
    return list(imagenet_wnids())


@pytest.fixture(scope="session")
def spread_weights(tmp_path_factory, sample_images):
    """{model name: state-dict file} of seeded weights with informative outputs (tests/reference.py)."""
    folder = tmp_path_factory.mktemp("weights")
    files = sample_images.files()
    return {name: make_spread_weights(name, SEED, files, folder / f"{name}-spread.pt")
            for name in ("mobilenet_v3_small", "resnet50")}


def assert_matches_reference(predictions: pd.DataFrame, files, model_name: str, model, top_k: int = 5) -> None:
    reference = reference_probabilities(model, model_name, files)
    wnids = class_wnids()
    local_by_name = {f"{f.parent.name}/{f.name}": str(f) for f in files}
    assert len(predictions) == len(files)
    assert predictions["error"].isna().all(), predictions["error"].dropna().tolist()
    for row in predictions.itertuples():
        key = "/".join(row.path.split("/")[-2:])
        probs = reference[local_by_name[key]]
        ref_top = np.argsort(-probs.numpy(), kind="stable")
        indices, job_probs = list(row.top_k_indices), np.asarray(row.top_k_probs)
        assert len(indices) == top_k
        # each listed class has the reference's probability for this very image
        np.testing.assert_allclose(job_probs, probs[indices].numpy(), atol=1e-4)
        if indices[0] != ref_top[0]:
            assert abs(probs[ref_top[0]] - probs[indices[0]]) < TIE, (row.path, indices[0], ref_top[0])
        assert row.pred_index == indices[0]
        assert row.pred_prob == pytest.approx(job_probs[0], abs=1e-7)
        assert row.pred_wnid == wnids[row.pred_index]
        folder = row.path.split("/")[-2]
        assert row.wnid == folder.split("-", 1)[0]
        assert row.correct == (row.pred_wnid == row.wnid)
        ref_top5 = {wnids[i] for i in ref_top[:5]}
        if abs(probs[ref_top[4]] - probs[ref_top[5]]) > TIE:
            assert row.top5_correct == (row.wnid in ref_top5)


def assert_per_class_consistent(predictions: pd.DataFrame, per_class: pd.DataFrame) -> None:
    expected = predictions.groupby(["wnid", "label"], dropna=False).agg(
        n_images=("path", "size"),
        n_errors=("error", lambda s: int(s.notna().sum())),
        top1_accuracy=("correct", lambda s: s.dropna().astype(float).mean()),
        top5_accuracy=("top5_correct", lambda s: s.dropna().astype(float).mean()),
        mean_pred_prob=("pred_prob", lambda s: s.dropna().astype(float).mean()),
    ).reset_index()
    merged = per_class.merge(expected, on=["wnid", "label"], suffixes=("", "_expected"), validate="one_to_one")
    assert len(merged) == len(expected) == len(per_class)
    assert (merged["n_images"] == merged["n_images_expected"]).all()
    assert (merged["n_errors"] == merged["n_errors_expected"]).all()
    assert (merged["n_scored"] + merged["n_errors"] == merged["n_images"]).all()
    for column in ("top1_accuracy", "top5_accuracy", "mean_pred_prob"):
        np.testing.assert_allclose(merged[column].astype(float), merged[f"{column}_expected"].astype(float), atol=1e-6)
    assert per_class["n_images"].sum() == len(predictions)
    for row in per_class.itertuples():
        wrong = predictions[(predictions["wnid"] == row.wnid) & (predictions["correct"] == False)]  # noqa: E712
        if wrong.empty:
            assert row.most_confused_with is None
            continue
        counts = wrong.groupby(["pred_index", "pred_wnid"]).size().reset_index(name="count")
        top = counts.sort_values(["count", "pred_index"], ascending=[False, True]).iloc[0]
        assert row.most_confused_with["wnid"] == top["pred_wnid"]
        assert row.most_confused_with["count"] == top["count"]


@pytest.mark.parametrize("model_name", ["mobilenet_v3_small", "resnet50"])
def test_local_input_matches_reference(spark, sample_images, spread_weights, tmp_path, model_name):
    out = tmp_path / "run"
    weights = spread_weights[model_name]
    summary = run_in_process(spark, ["--input", str(sample_images.images_dir), "--output", str(out),
                                     "--model", model_name, "--weights", str(weights), "--batch-size", "8"])
    predictions = read_predictions(out)
    assert_matches_reference(predictions, sample_images.files(), model_name, model_from_file(model_name, weights))
    assert predictions["pred_index"].nunique() > 1, "test weights should give varied predictions"
    assert_per_class_consistent(predictions, read_per_class(out))
    assert (predictions["model"] == model_name).all()
    assert (predictions["run_id"] == summary["run_id"]).all()
    assert (predictions["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()).all()
    written = read_summary(out)
    assert written == json.loads(json.dumps(summary))
    assert written["random_weights"] is False and written["warning"] is None
    assert written["counts"]["images"] == len(sample_images.files())
    assert written["counts"]["errors"] == 0
    assert written["accuracy"]["top1"] == pytest.approx(predictions["correct"].astype(float).mean())


def test_s3_input_matches_reference(spark, sample_images, spread_weights, s3_server, s3_images, tmp_path):
    """Reading from S3 is the same for every model (ResNet50 is checked from the local folder above)."""
    model_name = "mobilenet_v3_small"
    out = tmp_path / "run"
    weights = spread_weights[model_name]
    run_in_process(spark, ["--input", s3_images, "--output", str(out), "--model", model_name,
                           "--weights", str(weights), "--s3-endpoint-url", s3_server])
    predictions = read_predictions(out)
    assert predictions["path"].str.startswith(s3_images).all()
    assert_matches_reference(predictions, sample_images.files(), model_name, model_from_file(model_name, weights))
    assert_per_class_consistent(predictions, read_per_class(out))


def test_random_weights_are_the_seeded_torchvision_init(spark, sample_images, tmp_path):
    """Any model's seeded init (the small one keeps the suite short; the demo's ResNet50 is the same code)."""
    out = tmp_path / "run"
    model_name = "mobilenet_v3_small"
    summary = run_in_process(spark, ["--input", str(sample_images.images_dir), "--output", str(out),
                                     "--model", model_name, "--random-weights", str(SEED)])
    predictions = read_predictions(out)
    assert_matches_reference(predictions, sample_images.files(), model_name, seeded_model(model_name, SEED))
    assert summary["random_weights"] is True
    assert "RANDOM WEIGHTS" in summary["warning"]
    assert summary["weights"]["seed"] == SEED


def test_rows_get_their_own_probability(spark, sample_images, spread_weights, tmp_path):
    """The tutorial reported row 0's probability for every row of a batch."""
    out = tmp_path / "run"
    weights = spread_weights["mobilenet_v3_small"]
    run_in_process(spark, ["--input", str(sample_images.images_dir), "--output", str(out),
                           "--model", "mobilenet_v3_small", "--weights", str(weights), "--batch-size", "32"])
    predictions = read_predictions(out)
    reference = reference_probabilities(model_from_file("mobilenet_v3_small", weights), "mobilenet_v3_small",
                                        sample_images.files())
    by_name = {"/".join(path.split("/")[-2:]): probs for path, probs in reference.items()}
    expected = [float(by_name["/".join(p.split("/")[-2:])].max()) for p in predictions["path"]]
    np.testing.assert_allclose(predictions["pred_prob"].astype(float), expected, atol=1e-4)
    assert predictions["pred_prob"].round(3).nunique() > len(predictions) // 4
