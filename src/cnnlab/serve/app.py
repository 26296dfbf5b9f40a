"""`create_app(verifier, index)`: the FastAPI application behind `cnnlab faces serve`.

    POST /verify   image1, image2 (files)[, crops=true]  -> distance, threshold, same (+ the two faces)
    POST /embed    images (one or more files)              -> embeddings
    POST /search   image (file)[, k]                        -> nearest gallery entries (with --index)
    GET  /healthz                                           -> model, index (and its state) and limits
    GET  /docs                                              -> OpenAPI documentation
    GET  /                                                  -> a page to compare two photos

The model is loaded once, before the app exists; requests share it and `FaceVerifier`'s lock
serialises the network, so concurrent requests get exactly the answers sequential ones would.
Every refusal is a 4xx with a JSON `detail` that says why: a body or file over the byte limit
(413, checked before the upload is read when the client declares its size, and while it is
read otherwise), an image over the pixel limit (413, from its header, before decoding), a file
that is not an image or in which the face step finds no face (422), a missing field (422). An
unexpected failure is a 500 with a JSON body, its traceback in the server log only.

The gallery index is read again whenever its index.json changes. When it cannot be used (removed,
half-copied, damaged, rebuilt with another model), the service goes on: `/healthz` still answers
200 and says why under `index`, `/search` answers 503 until the index is back, and both recover
without a restart. `k` follows the CLI's rule (`cnnlab.metrics.retrieval.clamp_k`): up to
`max_k`, and more than the gallery holds returns the whole gallery, ranked.

Without `--show-paths` no answer carries a path of the server (model, index, gallery images,
the text of an error): names only.
"""
from __future__ import annotations

import base64
import io
import logging
import math
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image

from cnnlab.core.errors import CnnlabError
from cnnlab.metrics.retrieval import BadK, clamp_k
from cnnlab.verifier import DEFAULT_MAX_PIXELS, FaceVerifier, GalleryIndex, ImageRejected, ImageTooLarge
from cnnlab.verifier.images import to_rgb
from cnnlab.verifier.index import INDEX_FILE, IndexModelMismatch, index_stamp

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


_CALIBRATED = "against its calibrated threshold."
_UNCALIBRATED = ("and shows how far apart they are: it holds no calibrated threshold, so it cannot say "
                 "whether they show the same person.")


def _page(has_threshold: bool) -> str:
    page = resources.files("cnnlab.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    return page if has_threshold else page.replace(_CALIBRATED, _UNCALIBRATED)


def _names_only(info: dict, keys: tuple[str, ...]) -> dict:
    """`info` with the server's absolute paths under `keys` cut to their last part."""
    return {k: (Path(v).name if k in keys and isinstance(v, str) else v) for k, v in info.items()}


# An absolute POSIX path (two parts at least) not inside a URL or a word: "/srv/models/m.pt".
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"`(),;:]+/)+([^\s/'\"`(),;:]+)")


class PathScrubber:
    """Text for a client with the server's paths cut to their last part: the paths the app
    knows (model, index, as given and resolved) first, then any other absolute path, so that
    the message of an error raised deep in the library leaks none either."""

    def __init__(self, *paths: str | Path | None):
        known = {str(q) for p in paths if p for q in (Path(p), Path(os.path.abspath(p)), Path(p).resolve())}
        self._known = sorted((k for k in known if k not in (".", "/")), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for path in self._known:
            text = text.replace(path, Path(path).name)
        return _ABSOLUTE_PATH.sub(r"\1", text)


def _scrubbed(value, scrub):
    """`value` (JSON-like) with `scrub` applied to every string in it."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v, scrub) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrubbed(v, scrub) for v in value]
    return value


def _index_problem(exc: Exception, verifier: FaceVerifier, stamp: tuple | None) -> str:
    """Why the index cannot be used, for a client: what is wrong, not which command fixes it."""
    if stamp is None:
        return f"its {INDEX_FILE} is missing (removed, or being replaced)"
    if isinstance(exc, IndexModelMismatch):
        return f"it was rebuilt with another model than this server's (fingerprint {verifier.fingerprint})"
    if isinstance(exc, CnnlabError):
        return str(exc).split("; ")[0]  # the part after it is advice for the command line
    return f"it could not be read ({type(exc).__name__})"


def create_app(verifier: FaceVerifier, index: GalleryIndex | None = None,
               limits: ServeLimits | None = None, *, show_paths: bool = False) -> FastAPI:
    """The service over an already loaded verifier (and index, checked against it here).
    Uploads are decoded under `limits`; the verifier is not changed (its own `max_pixels`
    still applies to what it is given, so the lower of the two limits wins)."""
    limits = limits or ServeLimits()
    if index is not None:
        index.check_model(verifier)
    private = (lambda text: text) if show_paths else PathScrubber(
        verifier.source, *((index.root, index.model_path) if index is not None else ()))
    model_name = verifier.source if show_paths else verifier.source.name
    app = FastAPI(title="cnnlab face verification",
                  description="Compare two face photos, embed faces, search a gallery index. "
                              f"Model {model_name} ({verifier.distance_name} distance).")
    app.state.verifier, app.state.index, app.state.limits = verifier, index, limits
    app.state.index_failure = None  # (index.json's stamp, why) of the last failed read
    app.add_middleware(BodyLimit, limits=limits)

    @app.exception_handler(ImageRejected)
    async def rejected(request: Request, exc: ImageRejected):
        return JSONResponse({"detail": private(str(exc))}, status_code=exc.status)

    @app.exception_handler(CnnlabError)
    async def misconfigured(request: Request, exc: CnnlabError):
        # Not the request's fault: say what, no traceback, no server path.
        return JSONResponse({"detail": private(str(exc))}, status_code=500)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)

    # Plain `def` endpoints: FastAPI runs them in its thread pool, so a request being embedded
    # never blocks the event loop (health checks, uploads of other requests) meanwhile.
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return _page(verifier.has_threshold)

    def current_index() -> tuple[GalleryIndex | None, str | None]:
        """(the index, None), or (None, why it cannot be used now); (None, None) without one.
        A writer (`faces index add/remove/prune`) may have committed since the last request:
        the index is read again when its index.json changed, so the service never needs a
        restart, and a failed read is not retried until index.json changes again."""
        if app.state.index is None:
            return None, None
        stamp = index_stamp(app.state.index.root)
        failure = app.state.index_failure
        if failure is not None and failure[0] == stamp:
            return None, failure[1]
        try:
            index = app.state.index.reloaded()
            index.check_model(verifier)
        except Exception as exc:  # removed, half-copied, damaged or rebuilt: the rest of the service goes on
            log.warning("gallery index unavailable: %s", exc)
            app.state.index_failure = (stamp, private(_index_problem(exc, verifier, stamp)))
            return None, app.state.index_failure[1]
        app.state.index, app.state.index_failure = index, None
        return index, None

    @app.get("/healthz")
    def healthz() -> dict:
        index, problem = current_index()
        model = verifier.describe()
        if index is not None:
            index_info = {"status": "ok", **index.describe()}
        elif problem is not None:
            index_info = {"status": "unavailable", "reason": problem, "index": str(app.state.index.root)}
        else:
            index_info = None
        if not show_paths:  # the server's file layout is nobody's business but its operator's
            model = _names_only(model, ("model",))
            if isinstance(model.get("calibration"), dict):
                from cnnlab.verifier.api import describe_calibration
                model["calibration"] = _names_only(model["calibration"], ("folder",))
                model["threshold_source"] = describe_calibration({"calibration": model["calibration"]})
            index_info = None if index_info is None else _names_only(index_info, ("index", "model"))
        answer = {"status": "ok", "model": model, "index": index_info, "limits": limits.to_dict()}
        return answer if show_paths else _scrubbed(answer, private)

    @app.post("/verify")
    def verify(image1: UploadFile = File(..., description="first face photo"),
               image2: UploadFile = File(..., description="second face photo"),
               crops: bool = Form(False, description="also return the two preprocessed faces as PNG data URIs")
               ) -> dict:
        # A model without a calibrated threshold still measures: the answer says it cannot decide.
        pair = (_read_upload(image1, "image1", limits), _read_upload(image2, "image2", limits))
        result = verifier.verify(*pair) if verifier.has_threshold else verifier.verify(*pair, threshold=math.inf)
        answer = result.to_dict()
        if not verifier.has_threshold:
            answer.update(threshold=None, same=None)
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
        index, problem = current_index()
        if problem is not None:
            raise HTTPException(503, f"the gallery index is unavailable: {problem}; searches resume as soon "
                                     "as it is restored, try again later", headers={"Retry-After": "30"})
        if index is None:
            raise HTTPException(404, "this server was started without a gallery index (--index), so it "
                                     "cannot search")
        try:
            returned = clamp_k(k, index.count, limits.max_k)
        except BadK as exc:
            raise HTTPException(422, str(exc)) from None
        query = _read_upload(image, "image", limits)
        matches = verifier.identify(query, index, k=returned) if returned else []
        found = [m.to_dict() for m in matches]
        if not show_paths:  # the gallery-relative name says which image; the server path is private
            for m in found:
                m.pop("path")
        return {"matches": found, "gallery_images": index.count,
                "threshold": verifier.threshold if verifier.has_threshold else None}

    return app
