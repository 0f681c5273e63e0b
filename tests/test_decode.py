"""Decoding: every odd or bad input kind ends as the expected error kind, or as the same
pixels the weights' own transform makes from the equivalent image; bombs never allocate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from tests.bad_inputs import MAX_IMAGE_BYTES, build_cases
from tests.conftest import PROJECT_ROOT
from tests.reference import load_images
from udfs.decode import Preprocessing, decode_and_preprocess, normalize_batch
from udfs.errors import describe_failure
from udfs.settings import S3Options
from udfs.storage import read_bytes

MODEL = "mobilenet_v3_small"


def load(path: Path, prep: Preprocessing) -> torch.Tensor | tuple[str, str]:
    """What the predictor makes of one local file: a uint8 tensor or (error, error_kind)."""
    try:
        data = read_bytes(str(path), S3Options(), MAX_IMAGE_BYTES, path.stat().st_size)
        return decode_and_preprocess(data, prep)
    except Exception as exc:
        return describe_failure(exc)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_every_odd_input_kind_decodes_as_expected(sample_images, tmp_path):
    prep = Preprocessing.from_transforms(torchvision.models.get_model_weights(MODEL).DEFAULT.transforms())
    cases = [c for c in build_cases(sample_images.files()[:2], tmp_path / "refs") if c.storage is None]
    problems = []
    for case in cases:
        file = tmp_path / "tree" / case.relpath
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(case.data)
        result = load(file, prep)
        if case.error_kind is not None:
            if not isinstance(result, tuple) or result[1] != case.error_kind:
                problems.append(f"{case.name}: expected {case.error_kind}, got {result if isinstance(result, tuple) else 'pixels'}")
            elif " at 0x" in result[0]:
                problems.append(f"{case.name}: object repr in the message {result[0]!r}")
            continue
        if isinstance(result, tuple):
            problems.append(f"{case.name}: expected pixels, got {result}")
            continue
        expected = load_images(MODEL, [case.same_as or file])[0]  # the weights' own transform
        got = normalize_batch(result.unsqueeze(0), prep, torch.float32)[0]
        if not torch.allclose(got, expected, atol=1e-5):
            problems.append(f"{case.name}: pixels differ from the reference by {(got - expected).abs().max():.4f}")
    assert not problems, "\n".join(problems)
    assert len(cases) >= 20


BOMB_PROBE = """
import json, resource, sys
from pathlib import Path
import torchvision
from tests.bad_inputs import png_bomb, jpeg_with_size
from PIL import Image
import io
from udfs.decode import Preprocessing, decode_and_preprocess
from udfs.errors import describe_failure
prep = Preprocessing.from_transforms(torchvision.models.get_model_weights("resnet50").DEFAULT.transforms())
jpeg = Path(sys.argv[1]).read_bytes()
strip = io.BytesIO(); Image.new("L", (60_000, 1)).save(strip, format="PNG")
inputs = {"bomb": png_bomb(10_000, 10_000), "huge": jpeg_with_size(jpeg, 65_000, 65_000),
          "strip": strip.getvalue()}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kinds = {}
for name, data in inputs.items():
    try:
        decode_and_preprocess(data, prep)
        kinds[name] = None
    except Exception as exc:
        kinds[name] = describe_failure(exc)[1]
grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"kinds": kinds, "grew_mb": grew_mb}))
"""


def test_bombs_are_refused_without_allocating_their_pixels(sample_images):
    """In a fresh process, so that its peak memory says what decoding the bombs cost: a 10000x10000
    PNG would take 400 MB decoded to RGB, and a 60000x1 strip 10 GB once resized to 232 pixels high."""
    result = subprocess.run([sys.executable, "-c", BOMB_PROBE, str(sample_images.files()[0])],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["kinds"] == {"bomb": "too_large", "huge": "too_large", "strip": "too_large"}
    assert probe["grew_mb"] < 60, probe
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's default limit stays on
