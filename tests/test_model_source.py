"""`--model` resolved into one ModelSource (udfs/model_source.py): what it builds, how it
preprocesses, what its classes are, and one clear line for a name that is neither library's."""

from __future__ import annotations

import pytest
import timm
import timm.data
import torch
import torchvision
from PIL import Image, ImageOps

from udfs.decode import decode_and_preprocess, normalize_batch
from udfs.errors import ModelSourceError
from udfs.labels import imagenet_wnids
from udfs.model_source import resolve_model_source


def test_torchvision_source_is_the_default_weights_entry():
    source = resolve_model_source("resnet50")
    entry = torchvision.models.ResNet50_Weights.DEFAULT
    transform = entry.transforms()
    assert (source.library, source.architecture, source.num_classes) == ("torchvision", "resnet50", 1000)
    assert source.pretrained == "ResNet50_Weights.IMAGENET1K_V2"
    prep = source.preprocessing
    assert (list(prep.resize_size), list(prep.crop_size)) == (transform.resize_size, transform.crop_size)
    assert (list(prep.mean), list(prep.std)) == (transform.mean, transform.std)
    assert source.classes.labels == tuple(entry.meta["categories"])
    assert source.classes.wnids == imagenet_wnids()
    assert type(source.build()) is torchvision.models.ResNet


def test_timm_source_takes_timm_own_eval_transform_and_imagenet_classes():
    source = resolve_model_source("timm/tf_efficientnet_lite0")
    assert (source.library, source.architecture, source.num_classes) == ("timm", "tf_efficientnet_lite0", 1000)
    assert source.pretrained == "tf_efficientnet_lite0.in1k"
    assert source.describe()["preprocessing"] == {"resize": [256], "crop": [224, 224], "interpolation": "bicubic",
                                                  "mean": [0.5] * 3, "std": [0.5] * 3}
    assert source.classes.wnids == imagenet_wnids()
    assert source.classes.label(207) == "golden retriever"
    model = source.build()
    assert type(model) is type(timm.create_model("tf_efficientnet_lite0")) and model.num_classes == 1000


def test_timm_preprocessing_equals_timm_transform_on_photos(sample_images):
    """The job's split (resize + crop on the CPU, normalisation on the device) gives what timm's
    own `create_transform` gives, applied to the same decoded photo."""
    source = resolve_model_source("timm/tf_efficientnet_lite0")
    config = timm.data.resolve_model_data_config(timm.create_model("tf_efficientnet_lite0"))
    transform = timm.data.create_transform(**config)
    for file in sample_images.files()[::10]:
        expected = transform(ImageOps.exif_transpose(Image.open(file)).convert("RGB"))
        ours = normalize_batch(decode_and_preprocess(file.read_bytes(), source.preprocessing)[None],
                               source.preprocessing, torch.float32)[0]
        # timm's ToTensor divides by 255 and normalises on the CPU: the same numbers within float rounding
        torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name, named", [
    ("resnet5", "did you mean resnet50"),
    ("tf_efficientnet_lite0", "did you mean timm/tf_efficientnet_lite0"),  # the prefix forgotten
    ("timm/tf_efficientnet_lite", "did you mean timm/tf_efficientnet_lite"),
    ("timm/resnet9000", "unknown timm classification model 'timm/resnet9000'"),
])
def test_unknown_names_name_the_close_matches(name, named):
    with pytest.raises(ModelSourceError, match=named) as refused:
        resolve_model_source(name)
    assert "\n" not in str(refused.value)


def test_a_timm_tag_whose_pretrained_head_is_not_imagenet_1k_resolves():
    """Its head size is read from its weights once fetched: 21843 classes need --classes
    (tests/test_class_lists.py), the check every other head goes through."""
    source = resolve_model_source("timm/vit_tiny_patch16_224.augreg_in21k")
    assert source.pretrained == "vit_tiny_patch16_224.augreg_in21k" and source.num_classes == 1000
