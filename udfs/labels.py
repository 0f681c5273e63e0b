"""Class index -> WordNet id and display name, and Stanford-Dogs folder names -> truth.

The truth of an image is its wnid; a prediction is correct when `pred_wnid == wnid`. The
index -> wnid table comes from timm's ImageNet-1k class index (`timm.data.ImageNetInfo`'s data,
in index order); display names come with the model source (`udfs.model_source`). Names are never
compared.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Optional

WNID = re.compile(r"n\d{8}")
WNID_FOLDER = re.compile(r"^(n\d{8})-(.+)$")
IMAGENET_CLASSES = 1000


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in class-index order.

    Read from timm's package data (`timm/data/_info/imagenet_synsets.txt`, the file
    `ImageNetInfo` reads) without importing timm: importing it (its model zoo) and building
    `ImageNetInfo` (22k lemmas and definitions) took ~0.5 s of every Python worker's model build,
    as long as building mobilenet_v3_small. `ImageNetInfo` when the file is not where timm 1.0
    keeps it. Tests check both against the official class index."""
    return _wnids_from_timm_data() or _wnids_from_imagenet_info()


def _wnids_from_timm_data() -> Optional[tuple[str, ...]]:
    spec = importlib.util.find_spec("timm")  # finds the package, does not run it
    for root in (spec.submodule_search_locations or []) if spec else []:
        synsets = Path(root) / "data" / "_info" / "imagenet_synsets.txt"
        if synsets.is_file():
            wnids = tuple(synsets.read_text().split())
            if len(wnids) == IMAGENET_CLASSES:
                return wnids
    return None


def _wnids_from_imagenet_info() -> tuple[str, ...]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_label_name(i) for i in range(info.num_classes()))


@dataclass(frozen=True)
class ClassNames:
    """What a model's output index means: wnid (when ImageNet-1k) and display label."""

    wnids: Optional[tuple[str, ...]]
    labels: tuple[str, ...]

    @classmethod
    def for_categories(cls, categories: list[str]) -> "ClassNames":
        wnids = imagenet_wnids() if len(categories) == IMAGENET_CLASSES else None
        return cls(wnids=wnids, labels=tuple(categories))

    def wnid(self, index: int) -> Optional[str]:
        return self.wnids[index] if self.wnids is not None else None

    @cached_property
    def _wnid_set(self) -> frozenset[str]:
        return frozenset(self.wnids or ())

    def knows(self, wnid: Optional[str]) -> bool:
        """Whether the model can predict `wnid` at all: an image whose truth it cannot predict has
        no known truth for it (counted in no accuracy), rather than a certain mistake."""
        return wnid is not None and wnid in self._wnid_set

    def label(self, index: int) -> str:
        return self.labels[index]


def truth_from_folder(folder: str) -> tuple[Optional[str], str]:
    """`n02085620-Chihuahua` -> (`n02085620`, `Chihuahua`); `cats` -> (None, `cats`).

    Underscores in the breed become spaces (`Border_collie` -> `Border collie`)."""
    match = WNID_FOLDER.match(folder)
    if match:
        return match.group(1), match.group(2).replace("_", " ")
    return None, folder
