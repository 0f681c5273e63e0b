"""Real runs for the report and compare tests, made once per test session.

`report_run`: the job on the sample photos with mobilenet_v3_small and seeded test weights whose
last layer favours the sample's breeds, so that predictions land on dog classes and the report's
tables have right and wrong answers to check. Accuracy from such weights means nothing.
The progress display runs in log mode with a short interval, and its lines are kept.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from tests.helpers import run_in_process
from tests.reference import make_spread_weights
from udfs.labels import imagenet_wnids

SEED = 11


def dog_biased_weights(files: list[Path], target: Path) -> Path:
    """Spread test weights (tests/reference.py) with the sample breeds' logits raised."""
    make_spread_weights("mobilenet_v3_small", SEED, files, target)
    state = torch.load(target, weights_only=True)
    bias_key = [k for k, v in state.items() if k.endswith(".bias") and v.shape == (1000,)][-1]
    wnids = imagenet_wnids()
    breeds = sorted({f.parent.name.split("-", 1)[0] for f in files})
    state[bias_key][[wnids.index(w) for w in breeds if w in wnids]] += 8.0
    torch.save(state, target)
    return target


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="session")
def report_run(spark, sample_images, tmp_path_factory):
    """(run directory, summary, progress log messages) of one real run with its report."""
    folder = tmp_path_factory.mktemp("report-run")
    weights = dog_biased_weights(sample_images.files(), folder / "weights.pt")
    out = folder / "run"
    records = _Records()
    progress_log = logging.getLogger("jobs.progress")
    level = progress_log.level
    progress_log.addHandler(records)
    progress_log.setLevel(logging.INFO)
    try:
        summary = run_in_process(spark, ["--input", str(sample_images.images_dir), "--output", str(out),
                                         "--model", "mobilenet_v3_small", "--weights", str(weights),
                                         "--progress", "log", "--progress-interval", "0.5"])
    finally:
        progress_log.removeHandler(records)
        progress_log.setLevel(level)
    return out, summary, records.messages
