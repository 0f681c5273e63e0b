"""Image trees for the demo and the tests, in Stanford Dogs' layout, made here (never committed).

`Images/<wnid>-<Breed>/<wnid>_<n>.jpg`. Three sources:
- `make_synthetic_tree`: generated JPEGs (offline, no licence terms): varied sizes, greyscale,
  progressive, CMYK, EXIF-rotated. Content is seeded noise and shapes, so a real model's
  accuracy on them means nothing; they exercise the pipeline.
- `sample_stanford_dogs`: a seeded sample from a local copy of the real dataset (`--images DIR`).
- `download_stanford_dogs`: the official archive (needs network access), then sampled.
"""

from __future__ import annotations

import io
import logging
import random
import shutil
import tarfile
import urllib.request
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from udfs.labels import imagenet_wnids

log = logging.getLogger(__name__)

STANFORD_DOGS_URL = "http://vision.stanford.edu/aditya86/ImageNetDogs/images.tar"
# ImageNet-1k indices of the 120 Stanford Dogs breeds: 151-268 less 251 (dalmatian), plus 273-275.
DOG_INDICES = tuple([i for i in range(151, 269) if i != 251] + [273, 274, 275])
EXIF_ORIENTATION = 0x0112


def dog_breeds(count: int, categories: Optional[list[str]] = None) -> list[tuple[str, str]]:
    """(wnid, folder breed name) of the first `count` Stanford Dogs breeds."""
    if categories is None:
        from udfs.model_source import imagenet_categories

        categories = imagenet_categories()
    wnids = imagenet_wnids()
    return [(wnids[i], categories[i].replace(" ", "_")) for i in DOG_INDICES[:count]]


def _synthetic_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    base = rng.integers(0, 256, size=3)
    gradient = np.linspace(0, 1, width)[None, :, None] * rng.integers(-120, 120, size=3)
    pixels = np.clip(base + gradient + rng.normal(0, 25, size=(height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    for _ in range(3):  # a few blocks so that crops and rotations change the content
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        block = Image.new("RGB", (width // 3, height // 3), tuple(int(v) for v in rng.integers(0, 256, size=3)))
        image.paste(block, (x0, y0))
    return image


def _encode(image: Image.Image, variant: str) -> bytes:
    buffer = io.BytesIO()
    if variant == "grayscale":
        image.convert("L").save(buffer, "JPEG", quality=90)
    elif variant == "progressive":
        image.save(buffer, "JPEG", quality=85, progressive=True)
    elif variant == "cmyk":
        image.convert("CMYK").save(buffer, "JPEG", quality=90)
    elif variant == "exif_rotated":
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6  # rotate 90° clockwise on display
        image.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    else:
        image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


VARIANTS = ("plain", "grayscale", "progressive", "exif_rotated", "cmyk", "plain")


def make_synthetic_tree(root: Path, breeds: int = 4, per_breed: int = 6, seed: int = 0) -> Path:
    """Generate `root/Images/<wnid>-<Breed>/<wnid>_<n>.jpg`; returns `root/Images`."""
    rng = np.random.default_rng(seed)
    images_dir = root / "Images"
    for wnid, breed in dog_breeds(breeds):
        folder = images_dir / f"{wnid}-{breed}"
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_breed):
            width, height = int(rng.integers(160, 520)), int(rng.integers(160, 520))
            variant = VARIANTS[n % len(VARIANTS)]
            data = _encode(_synthetic_image(rng, width, height), variant)
            (folder / f"{wnid}_{1000 + n}.jpg").write_bytes(data)
    log.info("generated %d synthetic images under %s", breeds * per_breed, images_dir)
    return images_dir


def sample_stanford_dogs(source: Path, target: Path, breeds: int, per_breed: int, seed: int = 0) -> Path:
    """Copy a seeded sample of a Stanford Dogs `Images/` tree (or its parent) to `target/Images`."""
    images = source / "Images" if (source / "Images").is_dir() else source
    folders = sorted(p for p in images.iterdir() if p.is_dir())
    if not folders:
        raise FileNotFoundError(f"no breed folders under {images}")
    chooser = random.Random(seed)
    chosen = chooser.sample(folders, min(breeds, len(folders)))
    out = target / "Images"
    for folder in sorted(chosen):
        files = sorted(p for p in folder.iterdir() if p.is_file())
        (out / folder.name).mkdir(parents=True, exist_ok=True)
        for file in chooser.sample(files, min(per_breed, len(files))):
            shutil.copyfile(file, out / folder.name / file.name)
    return out


def download_stanford_dogs(cache: Path, timeout_s: float = 20.0) -> Path:
    """The official archive, downloaded once into `cache` and unpacked; returns its `Images/`."""
    images = cache / "Images"
    if images.is_dir():
        return images
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / "images.tar"
    with urllib.request.urlopen(STANFORD_DOGS_URL, timeout=timeout_s) as response, open(archive, "wb") as out:
        shutil.copyfileobj(response, out)
    with tarfile.open(archive) as tar:
        tar.extractall(cache, filter="data")
    archive.unlink()
    return images
