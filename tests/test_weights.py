"""--weights files the job cannot use: one line that names the file as the user gave it and says
what is wrong with it (the driver's local copy, `incoming-...`, is an implementation detail)."""

from __future__ import annotations

import pytest
import torch

from udfs.errors import WeightsError
from udfs.model_source import resolve_model_source
from udfs.model import random_state_dict, resolve_weights
from udfs.settings import S3Options


def resolve(path, tmp_path, model="mobilenet_v3_small"):
    return resolve_weights(resolve_model_source(model), str(path), None, tmp_path / "work", S3Options())


@pytest.mark.parametrize("content", [b"import os\nprint('not weights')\n", b"\x89PNG\r\n\x1a\n" + bytes(64), b""])
def test_a_file_that_is_no_checkpoint(tmp_path, content):
    weights = tmp_path / "model.py"
    weights.write_bytes(content)
    with pytest.raises(WeightsError) as refused:
        resolve(weights, tmp_path)
    message = str(refused.value)
    assert message.startswith(f"cannot load weights from {weights}: not a PyTorch checkpoint (")
    assert "pickled" not in message and "incoming-" not in message and "\n" not in message
    assert "weights_only` set to `False`" not in message  # torch's advice, wrong for such a file


def test_a_truncated_checkpoint(tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save(random_state_dict(resolve_model_source("mobilenet_v3_small"), 0), whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(WeightsError, match=f"cannot load weights from {cut}: not a PyTorch checkpoint"):
        resolve(cut, tmp_path)


def test_weights_of_another_model(tmp_path):
    other = tmp_path / "resnet18.pt"
    torch.save(random_state_dict(resolve_model_source("resnet18"), 0), other)
    with pytest.raises(WeightsError, match=f"weights in {other} do not fit mobilenet_v3_small: "):
        resolve(other, tmp_path)
