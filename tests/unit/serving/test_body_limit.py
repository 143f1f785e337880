"""The body limit in front of LitServe (catdog.serving.server.BodyLimit): refuses what is too large before reading it
whole, refuses invalid JSON, turns raw bytes into the JSON form LitServe parses, leaves everything else alone."""

import asyncio
import base64
import json

from catdog.serving.server import BodyLimit


class Inner:
    """An ASGI app that records what reached it."""

    def __init__(self):
        self.calls = []

    async def __call__(self, scope, receive, send):
        message = await receive()
        self.calls.append((scope, message["body"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def call(app, body: bytes, content_type: str | None, path="/predict", method="POST", declared=None, chunk=None):
    headers = [(b"content-type", content_type.encode())] if content_type else []
    headers.append((b"content-length", str(len(body) if declared is None else declared).encode()))
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] if chunk else [body]
    reads = {"n": 0}

    async def receive():
        i = reads["n"]
        reads["n"] += 1
        return {"type": "http.request", "body": chunks[i], "more_body": i + 1 < len(chunks)}

    sent = []

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = sent[0]["status"]
    payload = sent[1]["body"]
    return status, (json.loads(payload) if status != 200 else payload), reads["n"]


def test_a_raw_body_reaches_litserve_as_json_base64():
    inner = Inner()
    status, _, _ = call(BodyLimit(inner, max_bytes=100), b"\xff\xd8 raw jpeg bytes", "image/jpeg")
    assert status == 200
    scope, body = inner.calls[0]
    assert json.loads(body) == {"image": base64.b64encode(b"\xff\xd8 raw jpeg bytes").decode()}
    headers = dict(scope["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) == len(body)


def test_a_form_and_other_paths_pass_through_untouched():
    inner = Inner()
    form = b"--b\r\nContent-Disposition: form-data; name=file\r\n\r\nxyz\r\n--b--\r\n"
    assert call(BodyLimit(inner, max_bytes=100), form, "multipart/form-data; boundary=b")[0] == 200
    assert inner.calls[0][1] == form
    call(BodyLimit(inner, max_bytes=1), b"x" * 50, "text/plain", path="/other")
    assert inner.calls[1][1] == b"x" * 50


def test_a_body_over_the_limit_is_refused_before_it_is_read_whole():
    inner = Inner()
    app = BodyLimit(inner, max_bytes=100)
    status, reply, reads = call(app, b"x" * 1000, "image/jpeg")  # declared too large: nothing read
    assert (status, reads) == (413, 0)
    assert "serve.max_bytes=100" in reply["detail"]
    status, _, reads = call(app, b"x" * 1000, "image/jpeg", declared=10, chunk=64)  # declared small, sent large
    assert status == 413 and reads == 2  # stopped at the chunk that passed the limit
    assert inner.calls == []


def test_empty_and_invalid_bodies_get_a_400():
    inner = Inner()
    app = BodyLimit(inner, max_bytes=100)
    status, reply, _ = call(app, b"", "application/octet-stream")
    assert status == 400 and "empty request body" in reply["detail"]
    status, reply, _ = call(app, b"{not json", "application/json")
    assert status == 400 and "not valid JSON" in reply["detail"]
    assert inner.calls == []
