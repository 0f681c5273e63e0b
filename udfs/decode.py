"""Decoding and preprocessing one image: bytes -> RGB PIL image -> uint8 CHW tensor.

The geometry (resize, centre crop, interpolation) comes from the weights' own `transforms()`;
the float conversion and normalisation are done later on the model's device
(`udfs.predictor`), so that only uint8 tensors travel to a GPU. The composition is numerically
the same as applying `weights.transforms()` to `Image.open(...).convert("RGB")`.

Pillow's safety defaults stay on: truncated files are errors (no LOAD_TRUNCATED_IMAGES), and an
image over `Image.MAX_IMAGE_PIXELS` is refused from its header, before its pixels are decoded;
so is one whose resize would make an image over that limit (an extreme aspect ratio).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from udfs.torchvision_import import load_torchvision

load_torchvision()  # first, so that torchvision comes without TorchDynamo
import torchvision.transforms.functional as F
from PIL import Image, ImageOps
from torchvision.transforms import InterpolationMode

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}


@dataclass(frozen=True)
class Preprocessing:
    """The weights' eval transform, split into a CPU part (geometry) and a device part."""

    resize_size: tuple[int, ...]
    crop_size: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: InterpolationMode = InterpolationMode.BILINEAR
    antialias: bool = True

    @classmethod
    def from_transforms(cls, transforms) -> "Preprocessing":
        """From torchvision's `ImageClassification` preset (what `weights.transforms()` gives)."""
        return cls(
            resize_size=tuple(transforms.resize_size),
            crop_size=tuple(transforms.crop_size),
            mean=tuple(transforms.mean),
            std=tuple(transforms.std),
            interpolation=transforms.interpolation,
            antialias=bool(transforms.antialias),
        )


def open_rgb(data: bytes) -> Image.Image:
    """Decode by content (not extension) to RGB, honouring EXIF orientation."""
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(
            f"image has {width * height} pixels, over the limit of {Image.MAX_IMAGE_PIXELS}"
        )
    image.load()
    ImageOps.exif_transpose(image, in_place=True)  # not a copy of the whole image when upright
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any mode: 16-bit greyscale scaled to 8 bits, palette transparency dropped (the colours under it kept)."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        pixels = np.asarray(image, dtype=np.uint32)
        if pixels.max(initial=0) > 255:
            pixels = pixels >> 8
        return Image.fromarray(pixels.astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def check_resized_size(image: Image.Image, prep: Preprocessing) -> None:
    """Refuse an image whose resize would exceed Pillow's pixel limit (a 60000x1 strip resized
    to a short side of 232 would take 10 GB), before any memory is allocated for it."""
    if len(prep.resize_size) != 1 or not Image.MAX_IMAGE_PIXELS:
        return
    short, long = sorted(image.size)
    new_short = prep.resize_size[0]
    pixels = new_short * int(new_short * long / max(short, 1))
    if pixels > Image.MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(
            f"a {image.width}x{image.height} image resized to a short side of {new_short} has {pixels} "
            f"pixels, over the limit of {Image.MAX_IMAGE_PIXELS}"
        )


def preprocess(image: Image.Image, prep: Preprocessing) -> torch.Tensor:
    """Resize and centre-crop as the weights' transform does; uint8 tensor of shape (3, H, W)."""
    check_resized_size(image, prep)
    image = F.resize(image, list(prep.resize_size), interpolation=prep.interpolation, antialias=prep.antialias)
    image = F.center_crop(image, list(prep.crop_size))
    return F.pil_to_tensor(image)


def decode_and_preprocess(data: bytes, prep: Preprocessing) -> torch.Tensor:
    return preprocess(open_rgb(data), prep)


def normalize_batch(batch: torch.Tensor, prep: Preprocessing, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (N, 3, H, W) on any device -> normalised float, as `weights.transforms()` does."""
    mean = torch.tensor(prep.mean, device=batch.device).view(1, -1, 1, 1)
    std = torch.tensor(prep.std, device=batch.device).view(1, -1, 1, 1)
    floats = batch.to(torch.float32).div_(255.0)
    return floats.sub_(mean).div_(std).to(dtype)
