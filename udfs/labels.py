"""Class index -> WordNet id and display name; listed truths -> the model's classes, by identity.

A model's classes (`ClassNames`) are ImageNet-1k for a 1000-way head (index -> wnid from timm's
class index, in index order; display names come with the model source, `udfs.model_source`), or
the list a `--classes` file gives (`read_class_list`: one class per line, as
`ImageFolder(...).classes` gives them, or a CSV `index,label[,wnid]`). A listed truth (a folder's
wnid and label) is the class with the same wnid when both carry one, otherwise the class whose
name equals the label exactly (`ClassNames.truth_index`); a prediction is correct when its index
is that class's. Names are never compared by pattern. The one normalisation: in a
`<wnid>-<Breed>` name, folder or class line alike, underscores in the breed become spaces.
"""

from __future__ import annotations

import csv
import importlib.util
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from udfs.errors import ClassListError, error_message

if TYPE_CHECKING:
    from udfs.settings import S3Options

WNID = re.compile(r"n\d{8}")
WNID_FOLDER = re.compile(r"^(n\d{8})-(.+)$")
IMAGENET_CLASSES = 1000
IMAGENET = "ImageNet-1k"  # the classes of a 1000-way head when no --classes file is given
MAX_CLASS_LIST_BYTES = 64 * 1024 * 1024
CSV_COLUMNS = ("index", "label", "wnid")


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
    """What a model's output index means: its display label and, where known, its wnid."""

    labels: tuple[str, ...]
    wnids: tuple[Optional[str], ...]  # one per class; None where the class has no wnid
    origin: str = IMAGENET  # where the list came from: ImageNet-1k, or the --classes file

    @classmethod
    def for_categories(cls, categories: list[str]) -> "ClassNames":
        """A library's category names: ImageNet-1k (with its wnids) when there are 1000."""
        if len(categories) == IMAGENET_CLASSES:
            return cls(labels=tuple(categories), wnids=imagenet_wnids())
        return cls(labels=tuple(categories), wnids=(None,) * len(categories), origin="the library's categories")

    def __len__(self) -> int:
        return len(self.labels)

    def wnid(self, index: int) -> Optional[str]:
        return self.wnids[index]

    def label(self, index: int) -> str:
        return self.labels[index]

    @cached_property
    def _lookup(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        by_wnid = {wnid: i for i, wnid in enumerate(self.wnids) if wnid is not None}
        by_label = {label: i for i, label in enumerate(self.labels)}
        by_label_without_wnid = {label: i for i, label in enumerate(self.labels) if self.wnids[i] is None}
        return by_wnid, by_label, by_label_without_wnid

    def truth_index(self, wnid: Optional[str], label: Optional[str]) -> Optional[int]:
        """The class a listed truth is, or None when the model has no such class (the image then
        counts in no accuracy, rather than as a certain mistake): when both carry a wnid, the
        class with the same wnid; otherwise the class whose name equals `label` exactly."""
        by_wnid, by_label, by_label_without_wnid = self._lookup
        if wnid is not None:
            found = by_wnid.get(wnid)
            return found if found is not None else by_label_without_wnid.get(label)
        return by_label.get(label) if label is not None else None


def read_class_list(uri: str, s3: "S3Options") -> ClassNames:
    """A `--classes` file (local path or s3://) as the model's classes; ClassListError (a usage
    error) says in one line what is wrong with it."""
    from udfs.storage import read_bytes

    try:
        data = read_bytes(uri, s3, MAX_CLASS_LIST_BYTES)
    except Exception as exc:  # missing, unreadable, a folder, S3 errors, too large
        raise ClassListError(f"cannot read classes file {uri}: {error_message(exc)}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ClassListError(f"classes file {uri} is not UTF-8 text") from None
    return parse_class_list(text, uri)


def parse_class_list(text: str, origin: str) -> ClassNames:
    """One class per line in index order (`n02085620-Chihuahua` carries a wnid and a label, as
    folder names do), or a CSV with the header `index,label[,wnid]` and indices 0..N-1. Empty lines
    only at the end; each class (wnid, name) once."""
    lines = text.removeprefix("\ufeff").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ClassListError(f"classes file {origin} lists no classes")
    header = [name.strip().lower() for name in next(csv.reader([lines[0]]), [])]
    if header[:1] == ["index"]:
        entries = _csv_entries(lines, header, origin)
    else:
        entries = _line_entries(lines, origin)
    for position in (1, 2):  # wnids, then labels: each at most once
        seen: dict[str, int] = {}
        for entry in entries:
            value = entry[position]
            if value is None:
                continue
            if value in seen:
                raise ClassListError(f"classes file {origin} lists {value!r} twice (lines {seen[value]} and "
                                     f"{entry[0]}): each class once")
            seen[value] = entry[0]
    return ClassNames(labels=tuple(e[2] for e in entries), wnids=tuple(e[1] for e in entries), origin=origin)


def _line_entries(lines: list[str], origin: str) -> list[tuple[int, Optional[str], str]]:
    """(line number, wnid, label) of each line, in file order (= index order)."""
    entries = []
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            raise ClassListError(f"classes file {origin}: line {number} is empty (empty lines only at the end)")
        wnid, label = truth_from_folder(name)
        entries.append((number, wnid, label))
    return entries


def _csv_entries(lines: list[str], header: list[str], origin: str) -> list[tuple[int, Optional[str], str]]:
    """(line number, wnid, label) of each row, in index order."""
    if header not in (list(CSV_COLUMNS[:2]), list(CSV_COLUMNS)):
        raise ClassListError(f"classes file {origin}: a CSV needs the header index,label or index,label,wnid "
                             f"(found {','.join(header)})")
    by_index: dict[int, tuple[int, Optional[str], str]] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            raise ClassListError(f"classes file {origin}: line {number} is empty (empty lines only at the end)")
        row = [value.strip() for value in next(csv.reader([line]))]
        if len(row) != len(header):
            raise ClassListError(f"classes file {origin}: line {number} has {len(row)} values, the header "
                                 f"{len(header)}")
        values = dict(zip(header, row))
        try:
            index = int(values["index"])
        except ValueError:
            raise ClassListError(f"classes file {origin}: line {number}: index {values['index']!r} is not a "
                                 "whole number") from None
        if not values["label"]:
            raise ClassListError(f"classes file {origin}: line {number} has no label")
        wnid = values.get("wnid") or None
        if wnid is not None and not WNID.fullmatch(wnid):
            raise ClassListError(f"classes file {origin}: line {number}: {wnid!r} is not a WordNet id "
                                 "(n followed by 8 digits)")
        if index in by_index:
            raise ClassListError(f"classes file {origin}: index {index} on lines {by_index[index][0]} and "
                                 f"{number}: the indices must be 0..N-1, each once")
        by_index[index] = (number, wnid, values["label"])
    expected = set(range(len(by_index)))
    if set(by_index) != expected:
        wrong = sorted(set(by_index) - expected)
        raise ClassListError(f"classes file {origin}: the indices must be 0..{len(by_index) - 1} for "
                             f"{len(by_index)} classes (found {', '.join(map(str, wrong[:5]))})")
    return [by_index[i] for i in range(len(by_index))]


def truth_from_folder(folder: str) -> tuple[Optional[str], str]:
    """`n02085620-Chihuahua` -> (`n02085620`, `Chihuahua`); `cats` -> (None, `cats`).

    Underscores in the breed become spaces (`Border_collie` -> `Border collie`)."""
    match = WNID_FOLDER.match(folder)
    if match:
        return match.group(1), match.group(2).replace("_", " ")
    return None, folder
