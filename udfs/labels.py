"""Class index -> WordNet id and display name, and Stanford-Dogs folder names -> truth.

The truth of an image is its wnid; a prediction is correct when `pred_wnid == wnid`. The
index -> wnid table comes from `timm.data.ImageNetInfo` (the ImageNet-1k class index, in
index order); display names from the weights' `meta["categories"]`. Names are never compared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

WNID_FOLDER = re.compile(r"^(n\d{8})-(.+)$")
IMAGENET_CLASSES = 1000


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in class-index order."""
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

    def label(self, index: int) -> str:
        return self.labels[index]


def truth_from_folder(folder: str) -> tuple[Optional[str], str]:
    """`n02085620-Chihuahua` -> (`n02085620`, `Chihuahua`); `cats` -> (None, `cats`).

    Underscores in the breed become spaces (`Border_collie` -> `Border collie`)."""
    match = WNID_FOLDER.match(folder)
    if match:
        return match.group(1), match.group(2).replace("_", " ")
    return None, folder
