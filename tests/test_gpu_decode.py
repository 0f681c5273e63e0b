"""The batched device-decode branch (--gpu-decode), run on the CPU: same results as Pillow's path
within tolerance, EXIF orientations exact, and the per-image Pillow fallback for what it can't take."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageOps

from tests.reference import make_spread_weights
from udfs.decode import decode_and_preprocess
from udfs.gpu_decode import EXIF_ORIENTATION, EncodedJpeg, apply_orientation, decode_batch, probe_jpeg
from tests.helpers import scoring_settings
from udfs.model import load_model
from udfs.model_source import resolve_model_source
from udfs.predictor import Predictor

MODEL = "mobilenet_v3_small"
SOURCE = resolve_model_source(MODEL)
PREP = SOURCE.preprocessing


def jpeg_bytes(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **save)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow_exif_transpose(orientation):
    pixels = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    image.info["exif"] = exif.tobytes()
    image.getexif()[EXIF_ORIENTATION] = orientation
    expected = np.asarray(ImageOps.exif_transpose(image))
    got = apply_orientation(torch.from_numpy(pixels).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, expected)


def test_probe_keeps_only_what_the_device_decoder_takes():
    rgb = Image.new("RGB", (40, 30), (10, 200, 30))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    assert probe_jpeg(jpeg_bytes(rgb, exif=exif.tobytes())) == EncodedJpeg(jpeg_bytes(rgb, exif=exif.tobytes()), 6)
    assert probe_jpeg(jpeg_bytes(rgb.convert("L"))).orientation == 1
    assert probe_jpeg(jpeg_bytes(rgb.convert("CMYK"))) is None
    png = io.BytesIO()
    rgb.save(png, "PNG")
    assert probe_jpeg(png.getvalue()) is None
    assert probe_jpeg(b"\xff\xd8 not really a jpeg") is None


def test_device_decode_is_close_to_pillow(sample_images):
    files = sample_images.files()[:12]
    datas = [f.read_bytes() for f in files]
    items = [probe_jpeg(d) for d in datas]
    keep = [(d, i) for d, i in zip(datas, items) if i is not None]
    assert keep, "sample should hold RGB/greyscale JPEGs"
    decoded = decode_batch([i for _, i in keep], torch.device("cpu"), PREP)
    for (data, _), tensor in zip(keep, decoded):
        reference = decode_and_preprocess(data, PREP)
        assert tensor.shape == reference.shape and tensor.dtype == torch.uint8
        difference = (tensor.int() - reference.int()).abs().float()
        assert difference.mean() < 2.0, difference.mean()  # levels out of 255: resize kernels differ slightly


def test_a_broken_jpeg_falls_back_to_one_error_row(sample_images, tmp_path):
    weights = make_spread_weights(MODEL, 3, sample_images.files(), tmp_path / "w.pt")
    good = sample_images.files()[:5]
    broken = tmp_path / "n02085620-x" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(good[0].read_bytes()[:2000])
    paths = good[:2] + [broken] + good[2:]
    batch = pd.DataFrame({"path": [str(p) for p in paths], "image_id": [p.stem for p in paths],
                          "wnid": [None] * len(paths), "label": [None] * len(paths),
                          "size_bytes": [p.stat().st_size for p in paths]})
    model = load_model(SOURCE, weights, torch.device("cpu"), True)
    plain = Predictor(scoring_settings(model=MODEL, batch_size=4), torch.device("cpu"), model)(batch)
    device = Predictor(scoring_settings(model=MODEL, batch_size=4, gpu_decode=True),
                       torch.device("cpu"), model)(batch)
    assert device["error"].notna().tolist() == [False, False, True, False, False, False]
    assert device.loc[2, "error_kind"] == "decode_error"
    ok = device["error"].isna()
    np.testing.assert_allclose(device.loc[ok, "pred_prob"].astype(float), plain.loc[ok, "pred_prob"].astype(float),
                               atol=0.03)
    agree = (device.loc[ok, "pred_index"] == plain.loc[ok, "pred_index"]).mean()
    assert agree >= 0.8, agree
