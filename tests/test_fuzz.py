"""Fuzzing the predictor with mutated real JPEG bytes (hypothesis).

Each example is a batch of one to three mutations of real photos (bytes flipped, overwritten,
inserted, deleted, truncated; header bytes, where the frame size and the tables live, more often)
plus one intact photo. The predictor must return exactly one row per input, within a time
limit, never raise, and score the intact photo exactly as when it is alone. FUZZ_EXAMPLES
examples run, derandomized, so CI sees the same inputs every time.
"""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import images_frame, scoring_settings
from tests.reference import make_spread_weights
from udfs.model import load_model
from udfs.model_source import resolve_model_source
from udfs.predictor import Predictor

pytestmark = [pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
              pytest.mark.usefixtures("one_torch_thread")]

MODEL = "mobilenet_v3_small"
SOURCE = resolve_model_source(MODEL)
FUZZ_EXAMPLES = 200
HANG_LIMIT_S = 60
HEADER_BYTES = 700
outcomes: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzz_setup(sample_images, tmp_path_factory):
    files = sample_images.files()
    folder = tmp_path_factory.mktemp("fuzz")
    weights = make_spread_weights(MODEL, 5, files, folder / "w.pt")
    settings = scoring_settings(model=MODEL, batch_size=2, decode_threads=2)
    predictor = Predictor(settings, torch.device("cpu"), load_model(SOURCE, weights, torch.device("cpu"), True))
    seeds = [f.read_bytes() for f in files[::40][:3]]
    intact = files[1]
    alone = score(predictor, [str(intact)])
    return predictor, seeds, intact, alone.iloc[0], folder


def score(predictor: Predictor, paths: list[str]) -> pd.DataFrame:
    return pd.concat(list(predictor.predict_batches(iter([images_frame(paths)]))), ignore_index=True)


@st.composite
def mutations(draw, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        size = len(data)
        if size < 4:
            break
        at = draw(st.one_of(st.integers(0, min(HEADER_BYTES, size - 1)), st.integers(0, size - 1)))
        operation = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate"]))
        if operation == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at:at + len(chunk)] = chunk
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif operation == "delete":
            del data[at:at + draw(st.integers(1, 256))]
        else:
            del data[at:]
    return bytes(data)


def test_mutated_jpegs_give_one_row_each_and_never_crash_or_hang(fuzz_setup):
    predictor, seeds, intact, alone, folder = fuzz_setup

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(mutations(seeds), min_size=1, max_size=3))
    def check(inputs: list[bytes]) -> None:
        paths = []
        for index, data in enumerate(inputs):
            path = folder / f"mutated-{index}.jpg"
            path.write_bytes(data)
            paths.append(str(path))
        paths.insert(len(paths) // 2, str(intact))
        result: list = []
        worker = threading.Thread(target=lambda: result.append(score(predictor, paths)), daemon=True)
        worker.start()
        worker.join(HANG_LIMIT_S)
        assert not worker.is_alive(), f"the predictor hung on {len(inputs)} mutated JPEGs"
        assert result, "the predictor raised instead of returning rows"
        rows = result[0]
        assert rows["path"].tolist() == paths
        for row in rows.itertuples():
            if isinstance(row.error, str):
                assert row.error_kind in {"decode_error", "unsupported_format", "too_large"}, row.error
                assert pd.isna(row.pred_index)
                outcomes[row.error_kind] += row.path != str(intact)
            else:
                assert len(row.top_k_indices) == 5 and 0 <= row.pred_prob <= 1
                outcomes["scored"] += row.path != str(intact)
        good = rows[rows["path"] == str(intact)].iloc[0]
        assert list(good.top_k_indices) == list(alone.top_k_indices)
        np.testing.assert_allclose(good.top_k_probs, alone.top_k_probs, atol=1e-5)

    check()
    print(f"fuzz: {FUZZ_EXAMPLES} examples, {sum(outcomes.values())} mutated JPEGs: {dict(outcomes)}")
    assert sum(outcomes.values()) >= FUZZ_EXAMPLES
