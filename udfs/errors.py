"""The one home for per-image failures: exception -> (`error`, `error_kind`).

Reading and decoding raise whatever they raise; `describe_failure` is the only place that
catches them broadly (via `udfs.predictor`) and turns one into one error row. Anything that is
not about a single image (model, device, out of memory) is not caught and fails the task, so
Spark retries it.
"""

from __future__ import annotations

import re

from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image, UnidentifiedImageError

_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")
_BOTOCORE_RETRIES = re.compile(r" \(reached max retries: \d+\)")
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}
_DENIED_CODES = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidObjectState"}
MAX_MESSAGE_CHARS = 500


class WeightsError(ValueError):
    """The weights cannot be had or do not fit the model (a user error: exit code 2)."""


class ModelSourceError(ValueError):
    """`--model` names nothing that can be built and scored (a user error: exit code 2)."""


class ClassListError(ValueError):
    """A `--classes` file that cannot be read or says no clear class list (a user error: exit code 2)."""


class S3RetriesExhausted(Exception):
    """An S3 request still failing transiently when its attempts or its time budget ran out."""

    def __init__(self, last: BaseException, attempts: int, limit: str):
        super().__init__(f"{error_message(last)} (still failing after {attempts} attempt"
                         f"{'s' if attempts != 1 else ''}: {limit} reached)")
        self.last, self.attempts = last, attempts


class ImageTooLarge(Exception):
    """The object is bigger than `--max-image-bytes`; it is not read."""


def error_kind(exc: BaseException) -> str:
    """Classify an exception raised while reading or decoding one image."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _NOT_FOUND_CODES:
            return "not_found"
        if code in _DENIED_CODES:
            return "access_denied"
        return "read_error"
    if isinstance(exc, (S3RetriesExhausted, BotoCoreError, ConnectionError, TimeoutError)):
        return "read_error"  # still failing after udfs.s3_retry's retries
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if isinstance(exc, PermissionError):
        return "access_denied"
    if isinstance(exc, (ImageTooLarge, Image.DecompressionBombError)):
        return "too_large"
    if isinstance(exc, UnidentifiedImageError):
        return "unsupported_format"
    return "decode_error"


def error_message(exc: BaseException) -> str:
    """A short, stable message: type and text, without object reprs that differ per run."""
    text = _OBJECT_REPR.sub("<object>", str(exc))
    text = _BOTOCORE_RETRIES.sub("", text).strip()  # botocore's own count: always 0, retries are udfs.s3_retry's
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return message[:MAX_MESSAGE_CHARS]


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """(`error`, `error_kind`) for one failed image."""
    return error_message(exc), error_kind(exc)
