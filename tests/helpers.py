"""Helpers shared by the tests: running the job in-process and reading its outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from jobs.cli import parse_settings
from jobs.run import run_job
from jobs.listing import list_images
from udfs.model_source import resolve_model_source
from udfs.settings import Settings


def run_in_process(spark, argv: Sequence[str]) -> dict:
    """Parse `argv` like the CLI, list, and run the job on the test session; returns the summary."""
    settings = parse_settings(list(argv))
    return run_job(spark, settings, list_images(settings))


def scoring_settings(**fields) -> Settings:
    """Settings as the driver hands them to the executors: `model` resolved to its source."""
    settings = Settings(**{"input": ".", "output": ".", **fields})
    return settings.with_model_source(resolve_model_source(settings.model))


def read_predictions(output: Path) -> pd.DataFrame:
    return pd.read_parquet(output / "predictions").sort_values("path", ignore_index=True)


def read_per_class(output: Path) -> pd.DataFrame:
    return pd.read_parquet(output / "per_class_accuracy")


def read_summary(output: Path) -> dict:
    return json.loads((output / "summary.json").read_text())


def images_frame(paths: Sequence[str]) -> pd.DataFrame:
    """The lister's table for these paths, in this order (truth from folder names, sizes unknown)."""
    from udfs.labels import truth_from_folder

    rows = []
    for path in paths:
        folder, name = path.rsplit("/", 2)[-2:]
        wnid, label = truth_from_folder(folder)
        rows.append((path, name.rsplit(".", 1)[0], wnid, label, None))
    return pd.DataFrame(rows, columns=["path", "image_id", "wnid", "label", "size_bytes"])


def softmax_rows(model, transform, files: Sequence[Path]) -> dict:
    """{`<folder>/<file>`: softmax probabilities} from a plain model: the library's own transform on
    Pillow images (EXIF orientation honoured, RGB), batches of 16, `torch.softmax`."""
    import torch
    from PIL import Image, ImageOps

    model.eval()
    result = {}
    for start in range(0, len(files), 16):
        chunk = files[start:start + 16]
        batch = torch.stack([transform(ImageOps.exif_transpose(Image.open(f)).convert("RGB")) for f in chunk])
        with torch.inference_mode():
            probs = torch.softmax(model(batch), dim=1)
        result.update({f"{f.parent.name}/{f.name}": row for f, row in zip(chunk, probs)})
    return result
