"""A small client of ``catdog-serve`` on the standard library (``http.client``): one kept-alive connection, an image
sent as the multipart field ``file`` or as the raw body; and :class:`ServerProcess`, a server started in the
background until it is ready (POSIX). For scripts, the load benchmark and the tests::

    client = Client("http://127.0.0.1:8000")
    status, answer = client.predict(open("cat.1.jpg", "rb").read())
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from typing import Any
from urllib.parse import urlsplit


def multipart(field: str, data: bytes, filename: str = "image", content_type: str = "application/octet-stream"):
    """``(body, content type)`` of a multipart form holding ``data`` as the file field ``field``."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Client:
    """Requests to one server over one HTTP/1.1 connection (reopened when the server closes it). Not thread-safe:
    one client per thread."""

    def __init__(self, url: str, timeout: float = 60.0):
        parts = urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname or "127.0.0.1", parts.port or 80, timeout
        self.connection: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """``(status, body bytes)``; one retry on a fresh connection when the kept-alive one was closed."""
        for attempt in (0, 1):
            if self.connection is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.connection.request(method, path, body=body, headers=headers or {})
                response = self.connection.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def predict(self, data: bytes, raw: bool = False, path: str = "/predict") -> tuple[int, Any]:
        """POST one image; ``(status, decoded JSON)``."""
        if raw:
            body, ctype = data, "application/octet-stream"
        else:
            body, ctype = multipart("file", data)
        status, payload = self.request("POST", path, body, {"Content-Type": ctype})
        return status, json.loads(payload) if payload else None

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m catdog.serve ARGS serve.port=PORT`` in its own process group on 127.0.0.1, ready once ``/health``
    answers ok; :meth:`stop` ends the group (the server, its HTTP processes and its inference workers)."""

    def __init__(self, args: list[str], cwd: str | os.PathLike, env: dict | None = None, log: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "catdog.serve", *args, "serve.host=127.0.0.1", f"serve.port={self.port}"]
        self.process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 120.0) -> ServerProcess:
        client, end = Client(self.url, timeout=5), time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"catdog-serve exited with {self.process.returncode} before it was ready")
            try:
                if client.get("/health") == (200, b"ok"):
                    return self
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"catdog-serve not ready after {timeout:.0f} s")

    def pids(self) -> list[int]:
        """The server's processes (its process group), from /proc."""
        group = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.getpgid(int(entry)) == self.process.pid:
                        group.append(int(entry))
        return group

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # workers that outlived the main process
        if self.log is not subprocess.DEVNULL:
            self.log.close()

    def __enter__(self) -> ServerProcess:
        return self.wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()
