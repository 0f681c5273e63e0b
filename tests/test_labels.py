"""Labels: the class index -> wnid table, and truth from Stanford-Dogs folder names."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.conftest import SHARED_CLASS_INDEX
from udfs.labels import (ClassNames, _wnids_from_imagenet_info, _wnids_from_timm_data, imagenet_wnids,
                         truth_from_folder)
from jobs.sample_images import DOG_INDICES


# sha256 of the 1000 wnids of the official class index (../shared/data/imagenet_class_index.json,
# md5 c2c37ea517e94d9795004a39431a14cb), one per line in index order: lets a fresh clone without
# ../shared check timm's table too, without copying the file into the project.
OFFICIAL_WNIDS_SHA256 = "385e0240499426c022b773be1ae4da780f057b89c9694c7f47199f62746b6edd"


def test_timm_wnids_equal_the_official_class_index():
    wnids = list(imagenet_wnids())
    assert hashlib.sha256("\n".join(wnids).encode()).hexdigest() == OFFICIAL_WNIDS_SHA256
    if SHARED_CLASS_INDEX.is_file():  # and entry by entry where the official file is at hand
        index = json.loads(SHARED_CLASS_INDEX.read_text())
        assert wnids == [index[str(i)][0] for i in range(1000)]


def test_timm_data_file_equals_imagenet_info():
    """The file read without importing timm is the table timm's ImageNetInfo gives."""
    assert _wnids_from_timm_data() == _wnids_from_imagenet_info() == imagenet_wnids()


def test_wnid_table_shape_and_known_entries():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and len(set(wnids)) == 1000
    assert wnids[151] == "n02085620"  # Chihuahua
    assert wnids[0] == "n01440764"  # tench


def test_dog_breeds_are_120_imagenet_classes():
    assert len(DOG_INDICES) == 120 and 251 not in DOG_INDICES


@pytest.mark.parametrize("folder, truth", [
    ("n02085620-Chihuahua", ("n02085620", "Chihuahua")),
    ("n02106166-Border_collie", ("n02106166", "Border collie")),
    ("n02106030-collie", ("n02106030", "collie")),
    ("cats", (None, "cats")),
    ("n0208-short", (None, "n0208-short")),
])
def test_truth_from_folder(folder, truth):
    assert truth_from_folder(folder) == truth


def test_border_collie_is_not_a_collie():
    """The tutorial's regex counted a Border collie prediction as a correct `collie`."""
    names = ClassNames.for_categories([f"c{i}" for i in range(1000)])
    border_collie, collie = imagenet_wnids().index("n02106166"), imagenet_wnids().index("n02106030")
    assert names.wnid(border_collie) != truth_from_folder("n02106030-collie")[0]
    assert names.wnid(collie) == truth_from_folder("n02106030-collie")[0]


def test_non_imagenet_heads_have_no_wnids():
    names = ClassNames.for_categories(["a", "b", "c"])
    assert names.wnid(1) is None and names.label(1) == "b"
