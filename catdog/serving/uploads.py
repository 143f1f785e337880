"""What a ``POST /predict`` request may carry, and the HTTP status of each bad input.

A request carries one image: a multipart form's ``file`` field, a JSON object ``{"image": BASE64}`` (a ``data:``
URL is accepted), or the raw bytes as the body (any other content type; :class:`catdog.serving.server.BodyLimit`
turns it into the JSON form before LitServe reads it). Nothing in a request names a file on the server: an upload's
file name is never used.

Every bad input is an :class:`UploadError` with a 4xx status and a message naming the cause; the message never holds
a path of the server's.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from catdog.errors import BadImageError

#: What the messages call the image (no name from the request is trusted or echoed).
UPLOAD_NAME = "the uploaded image"
HOW = "send one image as the multipart field 'file', as the raw request body, or as JSON {\"image\": BASE64}"


class UploadError(Exception):
    """A request the server refuses: ``status`` (4xx) and ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    def __reduce__(self):  # raised in an inference worker, answered by the HTTP process: must pickle
        return (UploadError, (self.status, self.message))


def _b64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise UploadError(400, f"JSON field 'image' must be a base64 string; {HOW}")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UploadError(400, "JSON field 'image' is not valid base64") from None


def upload_bytes(payload: Any, max_bytes: int) -> bytes:
    """The image bytes of a request's payload (LitServe's parsed form or JSON)."""
    if isinstance(payload, Mapping):
        if "file" in payload:
            item = payload["file"]
            data = item.encode() if isinstance(item, str) else getattr(item, "file", None)
            data = data.read() if hasattr(data, "read") else data
        elif "image" in payload:
            data = _b64(payload["image"])
        else:
            raise UploadError(400, f"no image in the request: {HOW}")
    else:
        raise UploadError(400, f"the request body is not a form or a JSON object: {HOW}")
    if not isinstance(data, bytes | bytearray):
        raise UploadError(400, f"the 'file' field holds no file: {HOW}")
    if not data:
        raise UploadError(400, f"empty image (0 bytes): {HOW}")
    if len(data) > max_bytes:
        raise UploadError(413, f"the image is {len(data):,} bytes, over serve.max_bytes={max_bytes:,}")
    return bytes(data)


def status_of(exc: BadImageError) -> int:
    """415 for what is not an image, 413 for an image over the size limits (a decompression bomb among them), 422
    for an image that cannot be decoded (truncated, corrupt)."""
    reason = exc.reason
    if reason.startswith("not an image") or reason.startswith("empty file"):
        return 415
    if "limit" in reason or "decompression bomb" in reason or "not enough memory" in reason:
        return 413
    return 422


def bad_image(exc: BadImageError) -> UploadError:
    status = status_of(exc)
    hint = " (serve.max_pixels sets the server's limit)" if status == 413 and "pixels, more than" in exc.reason else ""
    return UploadError(status, f"{UPLOAD_NAME}: {exc.reason}{hint}")
