"""Reading a report.html back in the tests, with the standard library's HTML parser."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from html.parser import HTMLParser

from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Cell:
    text: str
    attrs: dict[str, str]


@dataclass
class ParsedReport:
    tables: dict[str, list[list[Cell]]] = field(default_factory=dict)  # table id -> body rows
    row_attrs: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # table id -> <tr> attrs
    images: list[dict[str, str]] = field(default_factory=list)  # every <img>'s attributes
    ids: dict[str, str] = field(default_factory=dict)  # element id -> its text
    first_body_id: str | None = None
    figure_captions: list[str] = field(default_factory=list)


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.report = ParsedReport()
        self._table: str | None = None
        self._in_head = False
        self._row: list[Cell] | None = None
        self._cell: Cell | None = None
        self._open_ids: list[tuple[str, str]] = []  # (tag, id)
        self._texts: dict[str, list[str]] = {}
        self._in_body = False
        self._caption: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        if tag == "body":
            self._in_body = True
        elif self._in_body and self.report.first_body_id is None and "id" in attrs:
            self.report.first_body_id = attrs["id"]
        if "id" in attrs:
            self._open_ids.append((tag, attrs["id"]))
            self._texts.setdefault(attrs["id"], [])
        if tag == "table":
            self._table = attrs.get("id", "")
            self.report.tables.setdefault(self._table, [])
            self.report.row_attrs.setdefault(self._table, [])
        elif tag == "thead":
            self._in_head = True
        elif tag == "tr" and self._table is not None and not self._in_head:
            self._row = []
            self.report.row_attrs[self._table].append(attrs)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = Cell("", attrs)
        elif tag == "img":
            self.report.images.append(attrs)
        elif tag == "figcaption":
            self._caption = []
        elif tag == "br" and self._caption is not None:
            self._caption.append("\n")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._cell.text = self._cell.text.strip()
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.report.tables[self._table].append(self._row)
            self._row = None
        elif tag == "thead":
            self._in_head = False
        elif tag == "table":
            self._table = None
        elif tag == "figcaption" and self._caption is not None:
            self.report.figure_captions.append("".join(self._caption))
            self._caption = None
        if self._open_ids and self._open_ids[-1][0] == tag:
            _, element_id = self._open_ids.pop()
            self.report.ids[element_id] = " ".join("".join(self._texts[element_id]).split())

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.text += data
        if self._caption is not None:
            self._caption.append(data)
        for _, element_id in self._open_ids:
            self._texts[element_id].append(data)


def parse_report(text: str) -> ParsedReport:
    parser = _Parser()
    parser.feed(text)
    parser.close()
    return parser.report


def decode_data_uri(uri: str) -> tuple[str, bytes]:
    """`data:image/png;base64,...` -> ("image/png", bytes)."""
    assert uri.startswith("data:"), uri[:40]
    header, payload = uri[5:].split(",", 1)
    media, encoding = header.split(";")
    assert encoding == "base64"
    return media, base64.b64decode(payload, validate=True)


def assert_valid_png(data: bytes) -> tuple[int, int]:
    """A PNG by signature that Pillow fully decodes; returns its size."""
    assert data[:8] == PNG_SIGNATURE
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        image.load()
        assert image.width > 50 and image.height > 50
        return image.size
