"""Optional batched JPEG decoding on the model's device (`--gpu-decode`, nvjpeg on CUDA).

Fetch threads only probe each object's header with Pillow (`probe_jpeg`: format, mode, size,
EXIF orientation; no pixels decoded). Baseline/progressive RGB or greyscale JPEGs are kept as
bytes and decoded together, one `torchvision.io.decode_jpeg(list, device=...)` call per model
batch; EXIF orientation, resize and centre crop follow on the device. Everything else (PNG,
CMYK JPEGs, images over Pillow's pixel limit, and any JPEG the device decoder rejects) takes
the Pillow path of `udfs.decode`, image by image, so a bad file is still one error row.

The tensor resize is antialiased bilinear like Pillow's, but not bit-identical: outputs agree
with the Pillow path within a small tolerance (tests/test_gpu_decode.py runs this path on CPU,
where decode_jpeg is libjpeg-turbo like Pillow: ResNet50 probabilities within 2.2e-4). On CUDA
nvjpeg decodes the same files to visibly different pixels (its own IDCT and chroma upsampling):
on an H200, ResNet50 probabilities moved by up to 0.028 on the Stanford Dogs photos (93-95% same
top-1 with random weights) and 0.14 on the generated test images, across every JPEG variant
(scripts/bench_executors.py --check fp32:gpu-decode, largest_diffs). Hence opt-in.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Optional, Union

import torch
from udfs.torchvision_import import load_torchvision

load_torchvision()  # first, so that torchvision comes without TorchDynamo
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from udfs.decode import Preprocessing

EXIF_ORIENTATION = 0x0112
JPEG_MAGIC = b"\xff\xd8"


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG left undecoded for the batched device decoder."""

    data: bytes
    orientation: int = 1


def probe_jpeg(data: bytes) -> Optional[EncodedJpeg]:
    """An EncodedJpeg when the device decoder can take these bytes, else None (use Pillow)."""
    if not data.startswith(JPEG_MAGIC):
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                return None
            if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
                return None  # Pillow's path refuses it with the right error kind
            orientation = int(image.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a header Pillow cannot read: let the Pillow path classify the failure
        return None
    return EncodedJpeg(data, orientation if 1 <= orientation <= 8 else 1)


def apply_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """What `PIL.ImageOps.exif_transpose` does, on a (C, H, W) tensor."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1).flip(-2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(image, k=-1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-2, -1).flip(-1).flip(-2)
    if orientation == 8:
        return torch.rot90(image, k=1, dims=(-2, -1))
    return image


def tensor_transforms():
    """`torchvision.transforms.v2.functional`, imported on first use: it imports TorchDynamo
    (~1.4 s, see udfs.torchvision_import), which only this path needs. A predictor built with
    --gpu-decode calls it then, so that the import counts with the model build."""
    import torchvision.transforms.v2.functional as F

    return F


def preprocess_tensor(image: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    F = tensor_transforms()
    image = F.resize(image, list(prep.resize_size), interpolation=prep.interpolation, antialias=prep.antialias)
    return F.center_crop(image, list(prep.crop_size))


def decode_batch(items: list[EncodedJpeg], device: torch.device, prep: Preprocessing) -> list[Union[torch.Tensor, Exception]]:
    """Decode + orient + resize + crop on `device`; one result (tensor or exception) per item."""
    buffers = [torch.frombuffer(bytearray(item.data), dtype=torch.uint8) for item in items]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its decoders for TorchCodec
        try:
            decoded: list = list(decode_jpeg(buffers, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:  # one bad image fails the batch call: isolate it
            decoded = []
            for buffer in buffers:
                try:
                    decoded.append(decode_jpeg(buffer, mode=ImageReadMode.RGB, device=device))
                except RuntimeError as exc:
                    decoded.append(exc)
    return [result if isinstance(result, Exception) else preprocess_tensor(apply_orientation(result, item.orientation), prep)
            for item, result in zip(items, decoded)]
