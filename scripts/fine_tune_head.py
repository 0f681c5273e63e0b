"""Retrain a classifier's last layer on a folder tree, the way dog-breed teams do, for the job to score.

Reads IMAGES (one folder per class, e.g. Stanford Dogs' `Images/n02085620-Chihuahua/...`) with
torchvision's `ImageFolder`, replaces the model's head with one for its classes (sorted folder
names, `ImageFolder.classes`), trains that head for a few epochs with the backbone frozen, and
writes OUT/model.pt (the state dict) and OUT/classes.txt (one class per line, in index order).
The job then scores it:

    python scripts/fine_tune_head.py ../shared/data/stanford_dogs_sample/Images runs/head12
    spark-submit jobs/infer_dogs.py --input ... --output ... \
        --weights runs/head12/model.pt --classes runs/head12/classes.txt

The model, its preprocessing and its starting weights come from the job's own model source
(`--model resnet50` or `timm/<name>`; the library's pretrained weights unless `--weights` names a
state dict); training uses that preprocessing plus a random horizontal flip. It is a worked example
and a test fixture, not a training framework: one process, CPU or one GPU.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as `python scripts/fine_tune_head.py`
    sys.path.insert(0, str(PROJECT_ROOT))

log = logging.getLogger("fine_tune_head")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("images", type=Path, help="folder tree: one sub-folder of images per class")
    parser.add_argument("out", type=Path, help="where model.pt and classes.txt are written")
    parser.add_argument("--model", default="resnet50", help="the job's --model: torchvision name or timm/<name>")
    parser.add_argument("--weights", default=None,
                        help="starting state dict (its head is dropped); default: the library's pretrained weights")
    parser.add_argument("--random-init", type=int, default=None, metavar="SEED",
                        help="start from seeded random weights instead (offline tries only: the head learns little)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate of the head")
    parser.add_argument("--seed", type=int, default=0, help="the new head's initialisation and the batch order")
    return parser


def starting_state(source, weights: Optional[str], random_init: Optional[int], workdir: Path) -> dict:
    """The backbone's weights: a state dict of the ImageNet-1k model (head included, dropped later)."""
    from udfs.model import load_state_dict_file, random_state_dict
    from udfs.model_source import pretrained_weights_file

    if random_init is not None:
        return random_state_dict(source, random_init)
    return load_state_dict_file(Path(weights) if weights else pretrained_weights_file(source, workdir))


def train_transform(prep):
    """The model's own eval preprocessing (as the job applies it), plus a horizontal flip."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(list(prep.resize_size), interpolation=prep.interpolation, antialias=prep.antialias),
                      T.CenterCrop(list(prep.crop_size)), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(prep.mean, prep.std)])


def fine_tune(images: Path, out: Path, model_name: str = "resnet50", weights: Optional[str] = None,
              random_init: Optional[int] = None, epochs: int = 1, batch_size: int = 16, lr: float = 1e-2,
              seed: int = 0) -> tuple[Path, Path]:
    """Train the head; returns (model.pt, classes.txt)."""
    import torch
    from torchvision.datasets import ImageFolder

    from udfs.labels import parse_class_list
    from udfs.model_source import resolve_model_source

    dataset = ImageFolder(str(images))
    out.mkdir(parents=True, exist_ok=True)
    classes_file = out / "classes.txt"
    classes_file.write_text("".join(f"{name}\n" for name in dataset.classes))
    imagenet = resolve_model_source(model_name)
    source = imagenet.with_classes(parse_class_list(classes_file.read_text(), str(classes_file)))  # as the job reads it
    dataset.transform = train_transform(source.preprocessing)

    with tempfile.TemporaryDirectory(prefix="fine-tune-") as workdir:
        state = starting_state(imagenet, weights, random_init, Path(workdir))
    head = set(source.head_keys())
    torch.manual_seed(seed)
    model = source.build()
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=False)
    if set(missing) != head or unexpected:
        raise SystemExit(f"fine_tune_head: the starting weights do not fit {model_name} (missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]})")
    trained = [param for name, param in model.named_parameters() if name in head]
    for param in model.parameters():
        param.requires_grad = False
    for param in trained:
        param.requires_grad = True
    model.eval()  # the backbone stays as it was: batch-norm statistics frozen, no dropout
    optimizer = torch.optim.Adam(trained, lr=lr)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    for epoch in range(1, epochs + 1):
        seen = correct = 0
        loss_sum = 0.0
        for batch, targets in loader:
            logits = model(batch)
            loss = torch.nn.functional.cross_entropy(logits, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(targets)
            correct += int((logits.argmax(1) == targets).sum())
            loss_sum += loss.item() * len(targets)
        log.info("epoch %d/%d: loss %.3f, training top-1 %.1f%% over %d images", epoch, epochs, loss_sum / seen,
                 100 * correct / seen, seen)
    model_file = out / "model.pt"
    torch.save(model.state_dict(), model_file)
    return model_file, classes_file


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if not args.images.is_dir():
        print(f"fine_tune_head: error: not a folder: {args.images}", file=sys.stderr)
        return 2
    model_file, classes_file = fine_tune(args.images, args.out, args.model, args.weights, args.random_init,
                                         args.epochs, args.batch_size, args.lr, args.seed)
    print(f"wrote {model_file} and {classes_file}; score them with:\n"
          f"  spark-submit jobs/infer_dogs.py --input {args.images} --output OUTPUT --model {args.model} "
          f"--weights {model_file} --classes {classes_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
