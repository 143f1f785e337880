"""What a request may carry (catdog.serving.uploads): the image's bytes from a form, JSON or raw body, and a 4xx
status naming the cause of every bad input."""

import base64
import io
import pickle

import pytest
from PIL import Image

from catdog.data.images import load_image_bytes
from catdog.errors import BadImageError
from catdog.serving.uploads import UPLOAD_NAME, UploadError, bad_image, status_of, upload_bytes


class Upload:
    """What a multipart form's file field holds (starlette's UploadFile: a ``file`` to read)."""

    def __init__(self, data: bytes):
        self.file = io.BytesIO(data)
        self.filename = "../../etc/passwd"


def jpeg(size=(32, 24)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(out, format="JPEG")
    return out.getvalue()


def test_an_image_comes_from_a_form_field_or_json_base64_or_a_data_url():
    data = jpeg()
    assert upload_bytes({"file": Upload(data)}, 10_000) == data
    assert upload_bytes({"image": base64.b64encode(data).decode()}, 10_000) == data
    assert upload_bytes({"image": "data:image/jpeg;base64," + base64.b64encode(data).decode()}, 10_000) == data


@pytest.mark.parametrize(
    "payload, status, words",
    [
        ({}, 400, "no image in the request"),
        ([1, 2], 400, "not a form or a JSON object"),
        ({"file": Upload(b"")}, 400, "empty image (0 bytes)"),
        ({"image": "@@not base64@@"}, 400, "not valid base64"),
        ({"image": 42}, 400, "must be a base64 string"),
        ({"file": Upload(b"x" * 101)}, 413, "101 bytes, over serve.max_bytes=100"),
    ],
)
def test_a_request_without_a_usable_body_gets_a_4xx_naming_the_cause(payload, status, words):
    with pytest.raises(UploadError) as caught:
        upload_bytes(payload, 100)
    assert caught.value.status == status
    assert words in caught.value.message


def test_the_upload_file_name_is_never_used():
    # the form's file name points outside any folder: only the bytes are read, the messages say "the uploaded image"
    assert upload_bytes({"file": Upload(jpeg())}, 10_000) == jpeg()
    exc = bad_image(BadImageError(UPLOAD_NAME, "not an image: a text file"))
    assert "passwd" not in exc.message and exc.message.startswith(UPLOAD_NAME)


def _refusal(data: bytes, **kwargs) -> BadImageError:
    with pytest.raises(BadImageError) as caught:
        load_image_bytes(data, UPLOAD_NAME, **kwargs)
    return caught.value


def test_each_kind_of_bad_image_gets_its_own_status():
    data = jpeg((64, 64))
    assert status_of(_refusal(b"hello, not an image\n" * 4)) == 415
    assert status_of(_refusal(b"<!doctype html><html></html>")) == 415
    assert status_of(_refusal(data[: len(data) // 2])) == 422  # truncated
    too_big = _refusal(jpeg((200, 100)), max_pixels=10_000)
    assert status_of(too_big) == 413
    assert "serve.max_pixels" in bad_image(too_big).message
    assert status_of(_refusal(jpeg((1000, 5)))) == 413  # aspect ratio over the limit


def test_an_upload_error_survives_the_trip_between_processes():
    exc = pickle.loads(pickle.dumps(UploadError(415, "the uploaded image: not an image")))
    assert (exc.status, exc.message) == (415, "the uploaded image: not an image")
