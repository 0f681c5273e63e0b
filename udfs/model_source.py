"""One place for a model source: what `--model` names, resolved once on the driver.

`resolve_model_source("resnet50")` (a torchvision classifier) or
`resolve_model_source("timm/tf_efficientnet_lite0")` (any timm architecture) gives a
`ModelSource`: the library and architecture to build, the head size, the preprocessing (resize,
crop, interpolation, mean, std), the class list (index -> label, wnid where known) and the
library's own pretrained weights. A `--classes` file replaces ImageNet-1k's classes
(`with_classes`), and the head is built for as many; `head_size` reads the class count of a
state dict's head, for torchvision and timm models alike. It travels to the executors inside
`Settings`; the predictor, the weights check, the summary and the report read everything
model-specific from it, so a new model source is one more branch in this module and nowhere else.

torchvision's preprocessing and category names come from the architecture's DEFAULT weights
entry; timm's from `timm.data.resolve_model_data_config` + `create_transform`, the eval transform
timm itself applies, with torchvision's ImageNet-1k category names for a 1000-way head. timm is
imported only for timm models: its import loads TorchDynamo (~1.3 s of every worker's start).
"""

from __future__ import annotations

import difflib
import functools
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import torch
from udfs.torchvision_import import load_torchvision

load_torchvision()  # first, so that torchvision comes without TorchDynamo
import torchvision

from udfs.decode import Preprocessing
from udfs.errors import ModelSourceError, WeightsError
from udfs.labels import IMAGENET_CLASSES, ClassNames

TIMM_PREFIX = "timm/"


@dataclass(frozen=True)
class ModelSource:
    """Everything model-specific a run needs, on the driver and on the executors."""

    name: str  # as given to --model: "resnet50", "timm/tf_efficientnet_lite0"
    library: str  # "torchvision" or "timm"
    architecture: str  # the library's own name for it
    num_classes: int
    preprocessing: Preprocessing
    classes: ClassNames
    pretrained: str  # the library's pretrained weights: "ResNet50_Weights.IMAGENET1K_V2", "tf_efficientnet_lite0.in1k"

    def build(self) -> torch.nn.Module:
        """The architecture with a head of `num_classes`, freshly initialised (the caller loads the weights)."""
        return _build(self.library, self.architecture, self.num_classes)

    def with_classes(self, classes: ClassNames) -> "ModelSource":
        """This model with a head for `classes` (a --classes file) instead of ImageNet-1k's."""
        return replace(self, classes=classes, num_classes=len(classes))

    def head_keys(self) -> tuple[str, ...]:
        """The state-dict keys of the head's parameters (what a new class list replaces)."""
        return tuple(_head_dims(self.library, self.architecture))

    def head_size(self, state: dict[str, torch.Tensor]) -> Optional[int]:
        """The number of classes the head in `state` has, or None when `state` has no head of this
        architecture (loading it then fails with the library's own message)."""
        for key, dim in _head_dims(self.library, self.architecture).items():
            if key in state and state[key].dim() > dim:
                return int(state[key].shape[dim])
        return None

    def describe(self) -> dict[str, Any]:
        """What ran, for summary.json and the report."""
        prep = self.preprocessing
        return {"name": self.name, "library": self.library, "architecture": self.architecture,
                "num_classes": self.num_classes, "classes": self.classes.origin, "pretrained": self.pretrained,
                "preprocessing": {"resize": list(prep.resize_size), "crop": list(prep.crop_size),
                                  "interpolation": prep.interpolation.value, "mean": list(prep.mean),
                                  "std": list(prep.std)}}


def _build(library: str, architecture: str, num_classes: int) -> torch.nn.Module:
    if library == "timm":
        import timm

        return timm.create_model(architecture, pretrained=False, num_classes=num_classes)
    return torchvision.models.get_model(architecture, weights=None, num_classes=num_classes)


@functools.cache
def _head_dims(library: str, architecture: str) -> dict[str, int]:
    """{state-dict key: the dimension that is the class count} of the architecture's head (its
    classifier's weight and bias, and auxiliary heads such as Inception v3's): the parameters whose
    shape changes with the number of classes, found by building it with two head sizes on the meta
    device (no memory, no initialisation cost)."""
    shapes = []
    for num_classes in (IMAGENET_CLASSES, 7):
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # inception_v3's notice about its initialisation
                model = _build(library, architecture, num_classes)
        except Exception:  # an architecture whose construction needs real tensors
            model = _build(library, architecture, num_classes)
        shapes.append({key: tuple(value.shape) for key, value in model.state_dict().items()})
    dims = {}
    for key, shape in shapes[0].items():
        other = shapes[1].get(key)
        if other is not None and other != shape:
            dims[key] = next(i for i, (a, b) in enumerate(zip(shape, other)) if a != b)
    return dims


@functools.cache  # one value per name in a process: a run resolves once, the tests and benches many times
def resolve_model_source(name: str) -> ModelSource:
    """`--model` as a ModelSource; ModelSourceError (a usage error) names the close matches."""
    if name.startswith(TIMM_PREFIX):
        return _timm_source(name, name[len(TIMM_PREFIX):])
    return _torchvision_source(name)


def _unknown(name: str, known: list[str], library: str, listing: str) -> ModelSourceError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return ModelSourceError(f"unknown {library} classification model {name!r}: {hint}(see {listing})")


def _torchvision_source(name: str) -> ModelSource:
    known = sorted(torchvision.models.list_models(module=torchvision.models))
    if name not in known:
        import timm  # its names too: a timm model named without the prefix

        timm_names = [TIMM_PREFIX + n for n in timm.list_models()]
        raise _unknown(name, known + timm_names, "torchvision", "torchvision.models.list_models(module="
                       "torchvision.models), or timm/<name> for a timm model")
    entry = torchvision.models.get_model_weights(name).DEFAULT
    categories = entry.meta["categories"]
    return ModelSource(name=name, library="torchvision", architecture=name, num_classes=len(categories),
                       preprocessing=Preprocessing.from_transforms(entry.transforms()),
                       classes=ClassNames.for_categories(categories), pretrained=str(entry))


def _timm_source(name: str, architecture: str) -> ModelSource:
    import timm
    import timm.data

    if not architecture or not timm.is_model(architecture):
        raise _unknown(name, [TIMM_PREFIX + n for n in timm.list_models()], "timm", "timm.list_models()")
    pretrained = timm.models.get_pretrained_cfg(architecture)
    num_classes = IMAGENET_CLASSES  # until --classes says otherwise (the weights' head must match, udfs.model)
    with torch.device("meta"):  # only its configuration is read: no memory, no initialisation cost
        model = timm.create_model(architecture, pretrained=False, num_classes=num_classes)
    config = timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**config, is_training=False)
    tag = f"{pretrained.architecture}.{pretrained.tag}" if pretrained is not None and pretrained.tag else architecture
    return ModelSource(name=name, library="timm", architecture=architecture, num_classes=num_classes,
                       preprocessing=_preprocessing_from_timm(name, transform),
                       classes=ClassNames.for_categories(imagenet_categories()), pretrained=tag)


def _preprocessing_from_timm(name: str, transform) -> Preprocessing:
    """timm's eval transform (Resize, CenterCrop, ToTensor, Normalize) as the job's Preprocessing."""
    from torchvision import transforms as T

    found: dict[str, Any] = {}
    for step in transform.transforms:
        if isinstance(step, T.Resize):
            size = step.size if isinstance(step.size, (list, tuple)) else [step.size]
            found.update(resize_size=tuple(size), interpolation=step.interpolation,
                         antialias=bool(step.antialias) if step.antialias is not None else True)
        elif isinstance(step, T.CenterCrop):
            found["crop_size"] = tuple(step.size)
        elif isinstance(step, T.Normalize):
            found.update(mean=tuple(float(v) for v in step.mean), std=tuple(float(v) for v in step.std))
        elif type(step).__name__ not in ("ToTensor", "MaybeToTensor", "PILToTensor", "MaybePILToTensor"):
            raise ModelSourceError(f"{name}: timm's eval transform has a {type(step).__name__} step, which the "
                                   "job cannot apply (it resizes, centre-crops and normalises)")
    missing = {"resize_size", "crop_size", "mean", "std"} - set(found)
    if missing:
        raise ModelSourceError(f"{name}: timm's eval transform has no {', '.join(sorted(missing))}")
    return Preprocessing(**found)


def imagenet_categories() -> list[str]:
    """ImageNet-1k display names in class-index order, as torchvision ships them with its weights."""
    return list(torchvision.models.ResNet50_Weights.DEFAULT.meta["categories"])


def pretrained_weights_file(source: ModelSource, workdir: Path) -> Path:
    """The library's pretrained weights as a local state-dict file (downloaded once, then cached:
    torchvision's in the torch hub folder, timm's in the Hugging Face cache and in `workdir`)."""
    how = "pass --weights PATH|s3://... or, for a test run, --random-weights SEED"
    if source.library == "timm":
        import timm

        path = workdir / f"{source.architecture}-pretrained.pt"
        if path.is_file():  # fetched before Spark started (jobs.run.prepare_weights)
            return path
        try:  # the pretrained head as it is (in21k heads have 21843 classes: --classes must list them)
            model = timm.create_model(source.architecture, pretrained=True)
        except Exception as exc:  # huggingface_hub / urllib errors offline, no pretrained weights
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsError(f"cannot download timm's pretrained weights {source.pretrained} ({reason}); "
                               f"{how}") from exc
        torch.save(model.state_dict(), path)
        return path
    entry = torchvision.models.get_model_weights(source.architecture).DEFAULT
    try:
        entry.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # urllib errors, hash mismatch
        raise WeightsError(f"cannot download torchvision's default weights {entry} ({exc}); {how}") from exc
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(entry.url).name
