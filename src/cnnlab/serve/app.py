"""`create_app(verifier, index)`: the FastAPI application behind `cnnlab faces serve`.

    POST /verify   image1, image2 (files)[, crops=true]  -> distance, threshold, same (+ the two faces)
    POST /embed    images (one or more files)              -> embeddings
    POST /search   image (file)[, k]                        -> nearest gallery entries (with --index)
    GET  /healthz                                           -> model, index and limits
    GET  /docs                                              -> OpenAPI documentation
    GET  /                                                  -> a page to compare two photos

The model is loaded once, before the app exists; requests share it and `FaceVerifier`'s lock
serialises the network, so concurrent requests get exactly the answers sequential ones would.
Every refusal is a 4xx with a JSON `detail` that says why: a body or file over the byte limit
(413, checked before the upload is read when the client declares its size, and while it is
read otherwise), an image over the pixel limit (413, from its header, before decoding), a file
that is not an image or in which the face step finds no face (422), a missing field (422). An
unexpected failure is a 500 with a JSON body, its traceback in the server log only.
"""
from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image

from cnnlab.core.errors import CnnlabError
from cnnlab.metrics.retrieval import BadK, check_k
from cnnlab.verifier import DEFAULT_MAX_PIXELS, FaceVerifier, GalleryIndex, ImageRejected, ImageTooLarge
from cnnlab.verifier.images import to_rgb

log = logging.getLogger("cnnlab.serve")
_MULTIPART_OVERHEAD = 64 * 1024  # boundaries, headers and small form fields around the files


@dataclass(frozen=True)
class ServeLimits:
    max_upload_bytes: int = 10 * 1024 * 1024   # per image file
    max_pixels: int = DEFAULT_MAX_PIXELS         # per image, read from its header
    max_embed_images: int = 16                   # files in one /embed request
    max_k: int = 100                             # neighbours in one /search answer

    def body_limit(self, path: str) -> int | None:
        files = {"/verify": 2, "/search": 1, "/embed": self.max_embed_images}.get(path.rstrip("/") or "/")
        return None if files is None else files * self.max_upload_bytes + _MULTIPART_OVERHEAD

    def to_dict(self) -> dict:
        return {"max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels,
                "max_embed_images": self.max_embed_images, "max_k": self.max_k}


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over the route's limit is answered 413 without being
    read in full. A declared Content-Length is checked first; a body without one is counted
    as it streams in, and whatever the app makes of the broken read is replaced by the 413."""

    def __init__(self, app, limits: ServeLimits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        limit = self.limits.body_limit(scope.get("path", "")) if scope["type"] == "http" else None
        if limit is None:
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _send_json(send, 413,
                                    f"request body of {int(declared):,} bytes exceeds the limit of {limit:,}")
        state = {"seen": 0, "over": False, "answered": False}

        async def counting_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > limit:
                    state["over"] = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message):
            if not state["over"]:
                return await send(message)
            if not state["answered"]:
                state["answered"] = True
                await _send_json(send, 413, f"request body exceeds the limit of {limit:,} bytes")

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            if not state["answered"]:
                state["answered"] = True
                await _send_json(send, 413, f"request body exceeds the limit of {limit:,} bytes")


async def _send_json(send, status: int, detail: str) -> None:
    body = JSONResponse({"detail": detail}).body
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _read_upload(upload: UploadFile, field: str, limits: ServeLimits) -> Image.Image:
    """The upload decoded under the service's limits (at most max_upload_bytes read, the
    header's pixel count checked before decoding); errors about the image (an empty one
    included) name the form field it came from."""
    data = upload.file.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise ImageTooLarge(f"{field} is larger than the limit of {limits.max_upload_bytes:,} bytes")
    named = io.BytesIO(data)
    named.name = field
    return to_rgb(named, max_pixels=limits.max_pixels)


def _png_data_uri(face: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(face).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _page() -> str:
    return resources.files("cnnlab.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def _names_only(info: dict, keys: tuple[str, ...]) -> dict:
    """`info` with the server's absolute paths under `keys` cut to their last part."""
    return {k: (Path(v).name if k in keys and isinstance(v, str) else v) for k, v in info.items()}


def create_app(verifier: FaceVerifier, index: GalleryIndex | None = None,
               limits: ServeLimits | None = None, *, show_paths: bool = False) -> FastAPI:
    """The service over an already loaded verifier (and index, checked against it here).
    Uploads are decoded under `limits`; the verifier is not changed (its own `max_pixels`
    still applies to what it is given, so the lower of the two limits wins)."""
    limits = limits or ServeLimits()
    if index is not None:
        index.check_model(verifier)
    app = FastAPI(title="cnnlab face verification",
                  description="Compare two face photos, embed faces, search a gallery index. "
                              f"Model {verifier.source} ({verifier.distance_name} distance).")
    app.state.verifier, app.state.index, app.state.limits = verifier, index, limits
    app.add_middleware(BodyLimit, limits=limits)

    @app.exception_handler(ImageRejected)
    async def rejected(request: Request, exc: ImageRejected):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(CnnlabError)
    async def misconfigured(request: Request, exc: CnnlabError):
        # Not the request's fault (e.g. a model without a threshold): say what, no traceback.
        return JSONResponse({"detail": str(exc)}, status_code=500)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)

    # Plain `def` endpoints: FastAPI runs them in its thread pool, so a request being embedded
    # never blocks the event loop (health checks, uploads of other requests) meanwhile.
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return _page()

    def current_index() -> GalleryIndex | None:
        # A writer (`faces index add/remove/prune`) may have committed since the last request:
        # re-read the index when its index.json changed, so the service never needs a restart.
        if app.state.index is not None:
            app.state.index = app.state.index.reloaded()
        return app.state.index

    @app.get("/healthz")
    def healthz() -> dict:
        index = current_index()
        model = verifier.describe()
        index_info = None if index is None else index.describe()
        if not show_paths:  # the server's file layout is nobody's business but its operator's
            model = _names_only(model, ("model",))
            if isinstance(model.get("calibration"), dict):
                from cnnlab.verifier.api import describe_calibration
                model["calibration"] = _names_only(model["calibration"], ("folder",))
                model["threshold_source"] = describe_calibration({"calibration": model["calibration"]})
            index_info = None if index_info is None else _names_only(index_info, ("index", "model"))
        return {"status": "ok", "model": model, "index": index_info, "limits": limits.to_dict()}

    @app.post("/verify")
    def verify(image1: UploadFile = File(..., description="first face photo"),
               image2: UploadFile = File(..., description="second face photo"),
               crops: bool = Form(False, description="also return the two preprocessed faces as PNG data URIs")
               ) -> dict:
        result = verifier.verify(_read_upload(image1, "image1", limits), _read_upload(image2, "image2", limits))
        answer = result.to_dict()
        if crops:
            answer["faces"] = [_png_data_uri(f) for f in result.faces]
        return answer

    @app.post("/embed")
    def embed(images: list[UploadFile] = File(..., description="one or more face photos")) -> dict:
        if len(images) > limits.max_embed_images:
            raise HTTPException(413, f"at most {limits.max_embed_images} images per request, got {len(images)}")
        data = [_read_upload(f, f"images[{i}]", limits) for i, f in enumerate(images)]
        z = verifier.embed(data)
        return {"embeddings": z.tolist(), "dim": int(z.shape[1]), "names": [f.filename for f in images]}

    @app.post("/search")
    def search(image: UploadFile = File(..., description="the face to look for"),
               k: int = Form(5, description="how many gallery entries to return")) -> dict:
        index = current_index()
        if index is None:
            raise HTTPException(404, "this server has no gallery index; start it with --index INDEX")
        try:
            check_k(k, min(limits.max_k, index.count), "this gallery and service")
        except BadK as exc:
            raise HTTPException(422, str(exc)) from None
        matches = verifier.identify(_read_upload(image, "image", limits), index, k=k)
        found = [m.to_dict() for m in matches]
        if not show_paths:  # the gallery-relative name says which image; the server path is private
            for m in found:
                m.pop("path")
        return {"matches": found, "threshold": verifier.threshold if verifier.has_threshold
                else None}

    return app
