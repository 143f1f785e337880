"""``serve(cfg)``: the members of ``ckpt=`` behind LitServe (extra ``serve``).

Endpoints (all on ``serve.host``, by default 127.0.0.1 only):

- ``POST /predict``: one image (:mod:`catdog.serving.uploads`) -> JSON ``class``, ``probability``,
  ``probabilities`` (by class name), ``model`` (each member's run, file, SHA-1 and temperature; TTA; ensembling)
  and, with ``serve.gradcam=true``, ``gradcam`` (a PNG data URL of the overlay and whose map it is). A bad input gets
  a 4xx JSON ``{"detail": ...}`` naming the cause; the other requests of its batch are answered as usual.
- ``GET /``: the web page (``static/index.html``: plain HTML and JavaScript, nothing fetched from elsewhere).
- ``GET /info``: LitServe's server settings, and under ``model`` what :meth:`Predictor.info` says.
- ``GET /health``: ``ok`` once every worker has loaded its models.

Requests are batched dynamically (``serve.max_batch_size`` within ``serve.batch_timeout`` seconds), each worker
(``serve.workers_per_device`` per device) holding its own copy of the models. :class:`BodyLimit` refuses a body over
the size limit before it is read whole, and turns a raw-bytes body into the JSON form LitServe parses.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from PIL import Image

from catdog.data.decode import decoder_description, resolve_decoder
from catdog.models.optim import plain
from catdog.models.precision import resolve_device
from catdog.runs.selection import resolve_members
from catdog.serving.predictor import Predictor
from catdog.serving.uploads import HOW, UploadError, upload_bytes
from catdog.validation import check_serve_config

try:  # the serve extra; check_serve_config names the install when it is missing
    import litserve as ls
    from fastapi.responses import HTMLResponse, JSONResponse
except ImportError:
    ls = None

log = logging.getLogger(__name__)

PAGE = Path(__file__).resolve().parent / "static" / "index.html"
API_PATH = "/predict"
#: Room for a multipart form's boundaries and headers around the file itself.
FORM_OVERHEAD = 64 * 1024


class CatdogAPI(ls.LitAPI if ls is not None else object):
    """LitServe's side: each worker builds a :class:`Predictor` in ``setup``; bad uploads travel through the batch
    as :class:`UploadError` values and come out as 4xx responses, so they never fail their batch-mates."""

    def __init__(self, predictor: dict[str, Any], max_bytes: int, threads: int | None, max_batch_size: int,
                 batch_timeout: float):  # fmt: skip
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=API_PATH)
        self.predictor_args, self.max_bytes, self.threads = predictor, max_bytes, threads

    def setup(self, device: str) -> None:
        # Pillow warns of a large image while opening it; the size limits then refuse it with a 413 of their own
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        if self.threads:
            torch.set_num_threads(self.threads)
        self.predictor = Predictor(**self.predictor_args, device=device)

    def decode_request(self, request):
        try:
            data = upload_bytes(request, self.max_bytes)
        except UploadError as exc:
            return exc
        return self.predictor.decode(data)

    def batch(self, inputs):
        return list(inputs)

    def predict(self, x):
        return self.predictor.predict(x) if isinstance(x, list) else self.predictor.predict([x])[0]

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        if isinstance(output, UploadError):
            return JSONResponse({"detail": output.message}, status_code=output.status)
        return output


async def _reply(send, status: int, detail: str) -> None:
    """A JSON ``{"detail": ...}`` answer with ``status``, sent on the ASGI channel ``send``."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware on ``POST /predict``: a body over the limit is refused (413) as soon as its declared or read
    length passes it, invalid JSON gets a 400, and a raw-bytes body (any content type but a form or JSON) reaches
    LitServe as ``{"image": BASE64}``. Everything else passes through untouched."""

    def __init__(self, app, max_bytes: int, path: str = API_PATH):
        self.app, self.max_bytes, self.path = app, max_bytes, path

    def _limit(self, kind: str) -> int:
        if kind == "form":
            return self.max_bytes + FORM_OVERHEAD
        if kind == "json":
            return (self.max_bytes + 2) // 3 * 4 + FORM_OVERHEAD  # base64 of max_bytes, and the object around it
        return self.max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        headers = [(k.lower(), v) for k, v in scope["headers"]]
        ctype = next((v for k, v in headers if k == b"content-type"), b"").decode("latin-1").lower()
        kind = (
            "form" if ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded"))
            else "json" if ctype.startswith("application/json") else "raw"
        )  # fmt: skip
        limit = self._limit(kind)
        too_big = f"the request body is over serve.max_bytes={self.max_bytes:,} (the image's own size limit)"
        declared = next((v for k, v in headers if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > limit:
            await _reply(send, 413, too_big)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await _reply(send, 413, too_big)
                return
            more = message.get("more_body", False)
        if kind == "json":
            try:
                json.loads(body)
            except ValueError:
                await _reply(send, 400, f"the JSON body is not valid JSON: {HOW}")
                return
        elif kind == "raw":
            if not body:
                await _reply(send, 400, f"empty request body: {HOW}")
                return
            body = bytearray(json.dumps({"image": base64.b64encode(bytes(body)).decode("ascii")}).encode())
            headers = [(k, v) for k, v in headers if k not in (b"content-type", b"content-length")]
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            scope = {**scope, "headers": headers}
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


def build_server(cfg: DictConfig, members: list[Path]):
    """The LitServer for checked ``cfg`` and its resolved ``members`` (loaded once here, so a bad checkpoint stops
    the command before any worker starts, and to fill ``/info``)."""
    s = plain(cfg.serve)
    device = resolve_device(cfg.device)
    predictor_args = {
        "members": [str(m) for m in members], "tta": int(cfg.tta), "views": cfg.tta_views, "ensemble": cfg.ensemble,
        "calibrate": bool(cfg.calibrate), "precision": str(cfg.precision), "decoder": resolve_decoder(cfg.decoder),
        "max_pixels": int(s["max_pixels"]), "gradcam": bool(s["gradcam"]),
    }  # fmt: skip
    first = Predictor(**predictor_args, device="cpu")
    info = first.info()
    predictor_args["identity"] = first.identity  # the workers reuse the files' digests
    del first
    workers = int(s["workers_per_device"])
    threads = s.get("threads") or (max(1, (os.cpu_count() or 1) // workers) if device.type == "cpu" else None)
    api = CatdogAPI(predictor_args, int(s["max_bytes"]), threads, int(s["max_batch_size"]), float(s["batch_timeout"]))
    server = ls.LitServer(
        api, accelerator=device.type, devices=s.get("devices", "auto") if device.type == "cuda" else 1,
        workers_per_device=workers, timeout=float(s["timeout"]), model_metadata=info,
        middlewares=[(BodyLimit, {"max_bytes": int(s["max_bytes"])})],
    )  # fmt: skip
    _replace_index(server.app)
    return server, info


def _replace_index(app) -> None:
    """LitServe answers ``GET /`` with a line of text; the web page replaces it."""
    app.router.routes = [
        r for r in app.router.routes if not (getattr(r, "path", None) == "/" and "GET" in (r.methods or ()))
    ]
    page = PAGE.read_text(encoding="utf-8")

    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    app.add_api_route("/", index, methods=["GET"], response_class=HTMLResponse, include_in_schema=False)


def serve(cfg: DictConfig) -> None:
    """Serve ``cfg.ckpt`` until interrupted (see the module docstring and conf/serve.yaml)."""
    check_serve_config(cfg)
    members = resolve_members(cfg.ckpt, cfg.paths.log_dir)
    server, info = build_server(cfg, members)
    host, port = cfg.serve.host, int(cfg.serve.port)
    log.info(
        "serving %d member(s) (%s, classes %s, tta=%d) at http://%s:%d/ : POST %s, GET /info, GET /health",
        len(members), ", ".join(info["arch"]), info["classes"], info["tta"], host, port, API_PATH,
    )  # fmt: skip
    log.info("decoder=%s: %s", cfg.decoder, decoder_description(info["decoder"]))
    print(f"catdog-serve: http://{host}:{port}/ (Ctrl+C stops it)", flush=True)
    server.run(host=host, port=port, generate_client_file=False, log_level=cfg.serve.log_level)
