"""scripts/bench_executors.py on CPU (it runs on the lent GPU machine, where no test runs): its
executor path scores every image exactly once through the job's predictor, in worker processes
fed task by task, and its check agrees with the plain torchvision reference."""

from __future__ import annotations

import pytest
import torch

from scripts.bench_executors import ExecutorConfig, check_device_rows, executor_path, listing, parse_check
from tests.reference import make_spread_weights

MODEL = "mobilenet_v3_small"
pytestmark = pytest.mark.slow  # spawns worker processes


@pytest.fixture(scope="module")
def weights(sample_images, tmp_path_factory):
    return make_spread_weights(MODEL, 5, sample_images.files(), tmp_path_factory.mktemp("w") / "spread.pt")


def test_config_spelling():
    assert ExecutorConfig.parse("8:2:128:fp16:gpu-decode") == ExecutorConfig(8, 2, 128, "fp16", True)
    assert ExecutorConfig.parse("4:4:64:fp32") == ExecutorConfig(4, 4, 64, "fp32", False)
    assert parse_check("fp16:gpu-decode:compile") == ("fp16", True, "compile")
    assert parse_check("fp32") == ("fp32", False, "auto")


def test_executor_path_scores_every_image_once(sample_images, weights):
    files = sample_images.files()
    run = executor_path(ExecutorConfig(2, 2, 8, "fp32"), MODEL, weights, listing(files), tasks_per_slot=3,
                        arrow_batch_size=16)
    assert (run["images"], run["distinct_images"], run["errors"]) == (len(files), len(files), 0)
    assert run["partitions"] == 6 and run["devices"] == ["cpu"]


def test_check_matches_the_reference(sample_images, weights):
    rows = check_device_rows(MODEL, weights, sample_images.files(), torch.device("cpu"),
                             [("fp32", False, "auto"), ("fp32", False, "eager")])
    for row in rows:
        assert row["errors"] == 0 and row["top1_agreement"] == 1.0 and row["max_abs_prob_diff"] < 1e-4
