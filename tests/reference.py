"""A plain torchvision reference for the job's predictions, computed in the tests.

Deliberately independent of `udfs`: models are built with `torchvision.models.get_model`,
images opened with Pillow (EXIF orientation honoured) and transformed with the weights' own
`transforms()`, probabilities from `torch.softmax`.

Seeded random initialisations are nearly useless as test models (mobilenet_v3_small gives every
class 0.001; resnet50 puts 99% on one class for every image), so the tests make "spread" weights:
the seeded initialisation with the last linear layer rescaled so that logits on real images
have a standard deviation of about 4, centred per class over a few of the images. Predictions then differ from image to image, and a
mix-up of rows, classes or probabilities shows.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from PIL import Image, ImageOps


def load_images(model_name: str, files: list[Path]) -> torch.Tensor:
    transform = torchvision.models.get_model_weights(model_name).DEFAULT.transforms()
    return torch.stack([transform(ImageOps.exif_transpose(Image.open(f)).convert("RGB")) for f in files])


def seeded_model(model_name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.get_model(model_name, weights=None).eval()


def make_spread_weights(model_name: str, seed: int, files: list[Path], target: Path) -> Path:
    """Save seeded weights whose last linear layer gives logits with std ~2 on `files`."""
    model = seeded_model(model_name, seed)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.bias.zero_()
        last.weight.normal_(0.0, 1.0)
        images = load_images(model_name, files[:: max(1, len(files) // 24)])
        logits = model(images)
        mean = logits.mean(dim=0)
        scale = 4.0 / (logits - mean).std().item()
        last.weight.mul_(scale)
        last.bias.copy_(-mean * scale)  # centred per class: the image, not a bias, decides
    torch.save(model.state_dict(), target)
    return target


def reference_probabilities(model: torch.nn.Module, model_name: str, files: list[Path],
                            batch_size: int = 16) -> dict[str, torch.Tensor]:
    """{absolute path: softmax probabilities (num_classes,)} for each image."""
    model.eval()
    result = {}
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        with torch.inference_mode():
            probs = torch.softmax(model(load_images(model_name, chunk)), dim=1)
        for file, row in zip(chunk, probs):
            result[str(file)] = row
    return result


def model_from_file(model_name: str, weights: Path) -> torch.nn.Module:
    model = torchvision.models.get_model(model_name, weights=None)
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval()
