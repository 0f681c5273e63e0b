"""Bad and odd image inputs, built as real bytes from real photos (tests only).

Each `Case` is one object to put in an input tree: its relative path, its bytes, and what the
job must make of it: an error row of a given `error_kind`, or a scored row whose probabilities
equal the reference on an equivalent image (`same_as`: the photo it was made from, or a
reference file written to a separate folder). Cases that need the storage to misbehave (an object deleted
after listing, access denied) are marked with `storage` and set up by the test that uses them.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageOps

GOOD_FOLDER = "n02085620-Chihuahua"
OTHER_FOLDER = "n02086240-Shih-Tzu"
PLAIN_FOLDER = "not a wnid folder"  # scored, truth null


@dataclass(frozen=True)
class Case:
    name: str
    relpath: str
    data: bytes
    error_kind: Optional[str] = None  # None: must be scored
    same_as: Optional[Path] = None  # a file with the equivalent image (None: the case's own bytes)
    storage: Optional[str] = None  # "deleted" or "denied": the test arranges it

    @property
    def scored(self) -> bool:
        return self.error_kind is None


def _encode(image: Image.Image, format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int, height: int) -> bytes:
    """A valid greyscale PNG of width x height zero pixels, compressed to a few hundred KB."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    parts = [compressor.compress(row * 1000) for _ in range(height // 1000)]
    parts.append(compressor.compress(row * (height % 1000)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))


def jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its frame header (SOF0/SOF2) claiming another width and height."""
    data = bytearray(jpeg)
    index = 2
    while index < len(data) - 9:
        marker, length = data[index + 1], struct.unpack(">H", data[index + 2:index + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[index + 5:index + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        index += 2 + length
    raise ValueError("no SOF marker")


def build_cases(good: list[Path], refs: Path) -> list[Case]:
    """Every bad or odd input kind, made from the photos in `good` (at least two).

    Equivalent images for the scored cases are written under `refs` (their `same_as`)."""
    refs.mkdir(parents=True, exist_ok=True)
    first, second = good[0], good[1]
    jpeg = first.read_bytes()
    rgb = ImageOps.exif_transpose(Image.open(first)).convert("RGB")
    small = rgb.resize((rgb.width // 2, rgb.height // 2))

    def ref(name: str, image: Image.Image) -> Path:
        image.save(refs / name, format="PNG")
        return refs / name

    gray = rgb.convert("L")
    sixteen = Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257)  # 8-bit values scaled to 16 bits
    palette = small.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.info["transparency"] = 0  # colour 0 transparent: its colour is kept under it
    rotated = rgb.transpose(Image.Transpose.ROTATE_90)  # stored turned; EXIF says turn it back
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    frames = [small, small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]

    the_photo = first
    cases = [
        # broken or not images at all
        Case("truncated JPEG", f"{GOOD_FOLDER}/truncated.jpg", jpeg[: len(jpeg) * 3 // 5], "decode_error"),
        Case("zero-byte file", f"{GOOD_FOLDER}/empty.jpg", b"", "unsupported_format"),
        Case("text file named .jpg", f"{GOOD_FOLDER}/notes.jpg", b"just some text\nnot an image\n" * 20,
             "unsupported_format"),
        Case("HTML error page named .jpg", f"{GOOD_FOLDER}/error-page.jpeg",
             b"<html><body><h1>503 Service Unavailable</h1></body></html>", "unsupported_format"),
        # other formats under a .jpg name: decoded by content
        Case("PNG named .jpg", f"{GOOD_FOLDER}/png-inside.jpg", _encode(rgb, "PNG"), same_as=the_photo),
        Case("WebP named .jpg", f"{GOOD_FOLDER}/webp-inside.jpg", _encode(rgb, "WEBP", lossless=True),
             same_as=the_photo),
        Case("BMP named .jpg", f"{GOOD_FOLDER}/bmp-inside.jpg", _encode(rgb, "BMP"), same_as=the_photo),
        Case("animated GIF named .jpg", f"{GOOD_FOLDER}/gif-inside.jpg",
             _encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
             same_as=ref("gif-frame0.png", Image.open(io.BytesIO(_encode(frames[0], "GIF"))).convert("RGB"))),
        Case("TIFF named .jpg", f"{GOOD_FOLDER}/tiff-inside.jpg", _encode(rgb, "TIFF"), same_as=the_photo),
        # odd modes and layouts
        Case("CMYK JPEG", f"{GOOD_FOLDER}/cmyk.jpg", _encode(rgb.convert("CMYK"), "JPEG", quality=95)),
        Case("greyscale JPEG", f"{GOOD_FOLDER}/grey.jpg", _encode(gray, "JPEG", quality=95)),
        Case("progressive JPEG", f"{GOOD_FOLDER}/progressive.jpg",
             _encode(rgb, "JPEG", quality=90, progressive=True)),
        Case("16-bit greyscale PNG", f"{GOOD_FOLDER}/sixteen-bit.png", _encode(sixteen, "PNG"),
             same_as=ref("sixteen-bit-as-8.png", gray.convert("RGB"))),
        Case("palette PNG with transparency", f"{GOOD_FOLDER}/palette.png", _encode(palette, "PNG"),
             same_as=ref("palette-colours.png", palette.convert("RGBA").convert("RGB"))),
        Case("EXIF-rotated", f"{GOOD_FOLDER}/exif-rotated.png", _encode(rotated, "PNG", exif=exif),
             same_as=the_photo),
        Case("one-pixel image", f"{GOOD_FOLDER}/one-pixel.png", _encode(Image.new("RGB", (1, 1), (200, 30, 90)), "PNG")),
        # too large: refused from the header or the size, without decoding the pixels
        Case("decompression bomb", f"{GOOD_FOLDER}/bomb.png", png_bomb(10_000, 10_000), "too_large"),
        Case("huge dimensions in the header", f"{GOOD_FOLDER}/huge.jpg", jpeg_with_size(jpeg, 65_000, 65_000),
             "too_large"),
        Case("a thin strip that resizes to a bomb", f"{GOOD_FOLDER}/strip.png",
             _encode(Image.new("L", (60_000, 1), 128), "PNG"), "too_large"),
        Case("over --max-image-bytes", f"{GOOD_FOLDER}/oversized.bmp",
             _encode(Image.effect_noise((1200, 1000), 64).convert("RGB"), "BMP"), "too_large"),
        # names and folders
        Case("spaces and non-ASCII in the name", f"{OTHER_FOLDER}/Hündchen mit Leerzeichen 犬 #1+%.jpg",
             second.read_bytes(), same_as=second),
        Case("folder not <wnid>-<Breed>", f"{PLAIN_FOLDER}/some dog.jpg", jpeg, same_as=the_photo),
        # storage faults, arranged by the test
        Case("object deleted after listing", f"{OTHER_FOLDER}/deleted-after-listing.jpg", jpeg, "not_found",
             storage="deleted"),
        Case("access denied", f"{OTHER_FOLDER}/private.jpg", jpeg, "access_denied", storage="denied"),
    ]
    return cases


# Runs with these cases set --max-image-bytes to this: the 3.6 MB BMP is over it, the rest under.
MAX_IMAGE_BYTES = 2_000_000

# Objects in the prefix that are not images by extension: skipped at listing and counted.
NON_IMAGE_OBJECTS = {
    f"{GOOD_FOLDER}/annotation.xml": b"<annotation><object>dog</object></annotation>",
    "README.txt": b"not an image",
}
