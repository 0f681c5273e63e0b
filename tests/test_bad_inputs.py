"""Bad inputs mixed with good images: each bad one is exactly one error row, each good one is
scored exactly as when it is alone; then the same run through a faulty S3 endpoint.

Unit level: the predictor on local files (every kind but access denied: the tests run as root
on CI, where file permissions deny nothing; the S3 run covers it). End to end: the job on a
loopback S3 bucket behind tests/fault_proxy.py, first answering faithfully (except 403 for the
private object), then failing a quarter of all requests; the two runs' outputs are identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from jobs.cli import parse_settings
from jobs.run import run_job
from jobs.listing import list_images
from tests.bad_inputs import GOOD_FOLDER, MAX_IMAGE_BYTES, NON_IMAGE_OBJECTS, build_cases
from tests.conftest import TEST_SECRET, s3_client_for
from tests.fault_proxy import FAULTS, FaultPlan, FaultProxy
from tests.helpers import images_frame, read_per_class, read_predictions, read_summary, scoring_settings
from tests.reference import make_spread_weights, model_from_file, reference_probabilities
from udfs.model import load_model
from udfs.model_source import resolve_model_source
from udfs.predictor import Predictor

pytestmark = [pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
              pytest.mark.usefixtures("one_torch_thread")]

MODEL = "mobilenet_v3_small"
SOURCE = resolve_model_source(MODEL)
BUCKET = "dogs-mixed"
PREFIX = "Images/"
FAULT_RATE = 0.25
PRED_COLUMNS = ["pred_index", "pred_wnid", "pred_label", "pred_prob", "top_k_indices", "top_k_probs",
                "correct", "top5_correct"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory, sample_images):
    return make_spread_weights(MODEL, 23, sample_images.files(), tmp_path_factory.mktemp("w") / "spread.pt")


@pytest.fixture(scope="module")
def good_files(sample_images):
    """Eight photos from four breeds."""
    files = sample_images.files()
    by_folder: dict[str, list] = {}
    for file in files:
        by_folder.setdefault(file.parent.name, []).append(file)
    return [f for folder in sorted(by_folder)[:4] for f in by_folder[folder][:2]]


@pytest.fixture(scope="module")
def reference(weights, good_files, tmp_path_factory):
    """The cases, and {file: reference probabilities} for the good photos and the cases' equivalents."""
    cases = build_cases(good_files, tmp_path_factory.mktemp("refs"))
    files = list(dict.fromkeys(good_files + [c.same_as for c in cases if c.same_as is not None]))
    probs = reference_probabilities(model_from_file(MODEL, weights), MODEL, files)
    return cases, probs


def expected_probs(case, own_file: Path, reference_probs, model) -> torch.Tensor:
    """The reference on the case's equivalent image, else on its own bytes."""
    if case.same_as is not None:
        return reference_probs[str(case.same_as)]
    return reference_probabilities(model, MODEL, [own_file])[str(own_file)]


def assert_scored_like(row, probs: torch.Tensor, what: str) -> None:
    assert row.error is None or pd.isna(row.error), f"{what}: {row.error}"
    indices = list(row.top_k_indices)
    np.testing.assert_allclose(row.top_k_probs, probs[indices].numpy(), atol=1e-4, err_msg=what)
    assert float(probs[indices[0]]) == pytest.approx(float(probs.max()), abs=1e-5), what


def assert_error_row(row, kind: str, what: str) -> None:
    assert row.error_kind == kind, f"{what}: {row.error_kind} ({row.error})"
    assert isinstance(row.error, str) and row.error, what
    assert " at 0x" not in row.error and TEST_SECRET not in row.error, row.error
    for column in PRED_COLUMNS:
        value = getattr(row, column)
        assert value is None or (not isinstance(value, (list, np.ndarray)) and pd.isna(value)), (what, column)


def test_predictor_bad_inputs_mixed_with_good(good_files, reference, weights, tmp_path):
    cases, reference_probs = reference
    tree = tmp_path / "tree"
    inputs = []  # (path, case or None)
    for case in cases:
        if case.storage == "denied":
            continue  # root reads everything: covered on S3 below
        file = tree / case.relpath
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(case.data)
        if case.storage == "deleted":
            file.unlink()
        inputs.append((str(file), case))
    good = [(str(f), None) for f in good_files]
    mixed = [item for pair in zip(good, inputs) for item in pair] + inputs[len(good):]  # good and bad in turn
    settings = scoring_settings(model=MODEL, batch_size=4, max_image_bytes=MAX_IMAGE_BYTES)
    model = load_model(SOURCE, weights, torch.device("cpu"), True)
    predictor = Predictor(settings, torch.device("cpu"), model)

    def score(items) -> pd.DataFrame:
        frame = images_frame([path for path, _ in items])
        batches = [frame.iloc[i:i + 6] for i in range(0, len(frame), 6)]
        return pd.concat(list(predictor.predict_batches(iter(batches))), ignore_index=True)

    out = score(mixed)
    assert out["path"].tolist() == [path for path, _ in mixed]  # one row each, in order
    assert predictor.stats.images == len(mixed)
    assert predictor.stats.errors == sum(1 for _, c in inputs if not c.scored)
    alone = score(good).set_index("path")
    plain_model = model_from_file(MODEL, weights)
    for row, (path, case) in zip(out.itertuples(), mixed):
        if case is None:
            assert_scored_like(row, reference_probs[path], path)
            np.testing.assert_allclose(row.top_k_probs, alone.loc[path, "top_k_probs"], atol=1e-5)
            assert list(row.top_k_indices) == list(alone.loc[path, "top_k_indices"])
        elif case.scored:
            assert_scored_like(row, expected_probs(case, Path(path), reference_probs, plain_model), case.name)
        else:
            assert_error_row(row, case.error_kind, case.name)
    assert out["error"].notna().sum() == sum(1 for _, c in inputs if not c.scored)


# -- end to end on S3, behind the fault proxy ----------------------------------------------------
@pytest.fixture(scope="module")
def mixed_bucket(s3_server, good_files, reference, sample_images):
    """s3://dogs-mixed/Images/: the good photos, every bad case, and two non-image objects."""
    cases, _ = reference
    client = s3_client_for(s3_server)
    client.create_bucket(Bucket=BUCKET)
    for file in good_files:
        client.upload_file(str(file), BUCKET, PREFIX + file.relative_to(sample_images.images_dir).as_posix())
    for case in cases:
        client.put_object(Bucket=BUCKET, Key=PREFIX + case.relpath, Body=case.data)
    for key, data in NON_IMAGE_OBJECTS.items():
        client.put_object(Bucket=BUCKET, Key=PREFIX + key, Body=data)
    return f"s3://{BUCKET}/{PREFIX}"


@pytest.fixture(scope="module")
def proxy(s3_server, reference):
    cases, _ = reference
    denied = frozenset(f"{BUCKET}/{PREFIX}{c.relpath}" for c in cases if c.storage == "denied")
    proxy = FaultProxy(s3_server, FaultPlan(deny_keys=denied)).start()
    yield proxy
    proxy.stop()


def sorted_per_class(out) -> pd.DataFrame:
    return read_per_class(out).sort_values(["wnid", "label"], ignore_index=True)


def job_argv(uri: str, output, weights, endpoint: str) -> list[str]:
    return ["--input", uri, "--output", str(output), "--model", MODEL, "--weights", str(weights),
            "--s3-endpoint-url", endpoint, "--s3-max-attempts", "6",
            "--s3-read-timeout", "1", "--max-image-bytes", str(MAX_IMAGE_BYTES), "--batch-size", "4",
            "--arrow-batch-size", "4", "--no-report"]


@pytest.fixture(scope="module")
def clean_run(spark, s3_server, mixed_bucket, proxy, weights, reference, tmp_path_factory):
    """The job through the proxy without faults; the 'deleted' object goes after listing."""
    cases, _ = reference
    out = tmp_path_factory.mktemp("clean") / "run"
    settings = parse_settings(job_argv(mixed_bucket, out, weights, proxy.endpoint))
    listing = list_images(settings)
    for case in cases:
        if case.storage == "deleted":
            s3_client_for(s3_server).delete_object(Bucket=BUCKET, Key=PREFIX + case.relpath)
    summary = run_job(spark, settings, listing)
    return listing, out, summary


@pytest.mark.slow
def test_job_scores_good_images_and_gives_each_bad_one_an_error_row(clean_run, reference, good_files,
                                                                     weights, sample_images, tmp_path):
    listing, out, summary = clean_run
    cases, reference_probs = reference
    predictions = read_predictions(out)
    by_path = predictions.set_index("path", drop=False)
    assert len(predictions) == len(listing.images) == len(good_files) + len(cases)
    assert predictions["path"].is_unique
    plain_model = model_from_file(MODEL, weights)
    for file in good_files:
        row = by_path.loc[f"s3://{BUCKET}/{PREFIX}{file.relative_to(sample_images.images_dir).as_posix()}"]
        assert_scored_like(row, reference_probs[str(file)], file.name)
    for case in cases:
        row = by_path.loc[f"s3://{BUCKET}/{PREFIX}{case.relpath}"]
        if case.scored:
            own = tmp_path / "own" / case.relpath
            own.parent.mkdir(parents=True, exist_ok=True)
            own.write_bytes(case.data)
            assert_scored_like(row, expected_probs(case, own, reference_probs, plain_model), case.name)
        else:
            assert_error_row(row, case.error_kind, case.name)
    plain = by_path[by_path["path"].str.contains("/not a wnid folder/")]
    assert plain["wnid"].isna().all() and plain["correct"].isna().all() and plain["error"].isna().all()

    expected_kinds = pd.Series([c.error_kind for c in cases if not c.scored]).value_counts().to_dict()
    assert summary["errors_by_kind"] == expected_kinds
    assert summary["counts"]["skipped_non_image"] == len(NON_IMAGE_OBJECTS)
    assert summary["counts"]["images"] == len(predictions)
    per_class = read_per_class(out)
    assert per_class["n_errors"].sum() == sum(expected_kinds.values())
    assert per_class.loc[per_class["wnid"] == GOOD_FOLDER.split("-")[0], "n_errors"].item() == sum(
        1 for c in cases if not c.scored and c.relpath.startswith(GOOD_FOLDER))
    assert TEST_SECRET not in (out / "summary.json").read_text()


@pytest.mark.slow
def test_faulty_s3_gives_the_same_outputs(spark, clean_run, mixed_bucket, proxy, weights, tmp_path):
    """A quarter of all requests (listing, HEAD, GET) meet a 500, a 503 SlowDown, a reset, a body
    cut off, a slow answer or a stall past the read timeout; boto3's retries carry the run."""
    listing, clean_out, clean_summary = clean_run
    proxy.set_plan(FaultPlan(rate=FAULT_RATE, seed=6, deny_keys=proxy.plan.deny_keys))
    try:
        out = tmp_path / "faulty"
        settings = parse_settings(job_argv(mixed_bucket, out, weights, proxy.endpoint))
        relisted = list_images(settings)  # through the faults too
        summary = run_job(spark, settings, listing)  # the first listing: it still holds the deleted object
    finally:
        faults, requests = dict(proxy.faults), proxy.requests
        proxy.set_plan(FaultPlan(deny_keys=proxy.plan.deny_keys))
    print(f"fault proxy: {sum(faults.values())} faults in {requests} requests ({faults})")
    deleted = set(listing.images["path"]) - set(relisted.images["path"])
    assert len(deleted) == 1 and len(relisted.images) == len(listing.images) - 1
    assert set(faults) == set(FAULTS), faults
    assert sum(faults.values()) >= 0.1 * requests

    clean, faulty = read_predictions(clean_out), read_predictions(out)
    pd.testing.assert_frame_equal(clean.drop(columns="run_id"), faulty.drop(columns="run_id"))
    pd.testing.assert_frame_equal(sorted_per_class(clean_out), sorted_per_class(out))
    for key in ("counts", "errors_by_kind", "accuracy"):
        assert summary[key] == clean_summary[key]
    assert TEST_SECRET not in json.dumps(read_summary(out))
