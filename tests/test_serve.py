"""The HTTP service through FastAPI's test client: every endpoint, every refusal as a 4xx with a
JSON reason, and answers identical to the Python API, one request at a time or 20 at once."""
from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from cnnlab.cli import main  # noqa: E402
from cnnlab.serve import ServeLimits, create_app  # noqa: E402
from cnnlab.verifier import DEFAULT_MAX_PIXELS, FaceVerifier, GalleryIndex, build_index  # noqa: E402
from face_models import build_tiny_model, face_bytes, make_gallery  # noqa: E402

LIMITS = ServeLimits(max_upload_bytes=60_000, max_pixels=1_000_000, max_embed_images=4)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model = build_tiny_model(root / "model.pt")
    gallery = make_gallery(root / "gallery", people=3, per_person=2)
    verifier = FaceVerifier.load(model, device="cpu")
    build_index(verifier, gallery, root / "idx", progress=False)
    index = GalleryIndex.open(root / "idx")
    with TestClient(create_app(verifier, index, LIMITS)) as client:
        yield client, verifier, gallery, root


def post_verify(client, a: bytes, b: bytes, **form):
    return client.post("/verify", files={"image1": ("a.png", a, "image/png"), "image2": ("b.png", b, "image/png")},
                       data=form)


def test_healthz_docs_and_page(service):
    client, verifier, _, _ = service
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["model"]["fingerprint"] == verifier.fingerprint
    assert health["index"]["images"] == 6 and health["limits"]["max_upload_bytes"] == 60_000
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/verify", "/embed", "/search", "/healthz"} <= set(paths)
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text.count('type="file"') == 2 and 'fetch("/verify"' in page.text


def test_verify_answers_as_the_python_api_and_shows_the_faces(service):
    client, verifier, _, _ = service
    a, b = face_bytes(1), face_bytes(2)
    response = post_verify(client, a, b, crops="true")
    assert response.status_code == 200
    answer = response.json()
    assert {k: answer[k] for k in ("distance", "threshold", "same", "distance_name")} == verifier.verify(a, b).to_dict()
    faces = [np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))) for uri in answer["faces"]]
    assert np.array_equal(faces[0], verifier.prepare(a)[0]) and np.array_equal(faces[1], verifier.prepare(b)[0])
    assert "faces" not in post_verify(client, a, b).json()


def test_embed_and_search(service):
    client, verifier, gallery, _ = service
    files = [("images", ("x.png", face_bytes(3), "image/png")),
             ("images", ("y.jpg", face_bytes(4, "JPEG"), "image/jpeg"))]
    answer = client.post("/embed", files=files).json()
    assert answer["dim"] == verifier.embedding_dim and answer["names"] == ["x.png", "y.jpg"]
    np.testing.assert_allclose(answer["embeddings"], verifier.embed([face_bytes(3), face_bytes(4, "JPEG")]), atol=1e-6)
    query = (gallery / "person01" / "1.png").read_bytes()
    found = client.post("/search", files={"image": ("q.png", query, "image/png")}, data={"k": "3"}).json()
    assert [m["rank"] for m in found["matches"]] == [1, 2, 3]
    assert found["matches"][0]["name"] == "person01/1.png" and found["matches"][0]["person"] == "person01"
    everything = client.post("/search", files={"image": ("q.png", query, "image/png")}, data={"k": "7"})
    assert everything.status_code == 200 and len(everything.json()["matches"]) == 6  # k > gallery: all of it


def test_search_without_an_index_is_404(service):
    _, verifier, _, _ = service
    with TestClient(create_app(verifier, None, LIMITS)) as bare:
        response = bare.post("/search", files={"image": ("q.png", face_bytes(1), "image/png")})
    assert response.status_code == 404 and "--index" in response.json()["detail"]


def png_of_size(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_requests_are_4xx_with_a_json_reason(service):
    client, _, _, _ = service
    good = face_bytes(1)
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    oversized = buffer.getvalue()
    assert len(oversized) > LIMITS.max_upload_bytes
    cases = {
        "oversized upload": (post_verify(client, oversized, good), 413),
        "too many pixels": (post_verify(client, png_of_size(1100, 1000), good), 413),
        "text file as image": (post_verify(client, b"hello, I am a text file\n", good), 422),
        "empty file": (post_verify(client, b"", good), 422),
        "missing field": (client.post("/verify", files={"image1": ("a.png", good, "image/png")}), 422),
        "no files at all": (client.post("/verify"), 422),
        "too many images": (client.post("/embed", files=[("images", ("a.png", good, "image/png"))] * 5), 413),
        "bad k": (client.post("/search", files={"image": ("q.png", good, "image/png")}, data={"k": "x"}), 422),
    }
    for name, (response, status) in cases.items():
        assert response.status_code == status, (name, response.status_code, response.text)
        assert response.headers["content-type"] == "application/json", name
        assert response.json()["detail"], name
        assert "Traceback" not in response.text, name
    assert "image1" in cases["text file as image"][0].json()["detail"]  # which upload was bad
    assert "1100 x 1000 pixels" in cases["too many pixels"][0].json()["detail"]
    # The service's limits are its own: the verifier it was given keeps its settings.
    assert service[1].max_pixels == DEFAULT_MAX_PIXELS != LIMITS.max_pixels


def test_a_body_without_declared_size_is_cut_off_at_the_limit(service):
    """A chunked upload (no Content-Length) is counted as it arrives and refused once over."""
    client, _, _, _ = service
    boundary = "cnnlabboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image1\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()

    def body():
        yield head
        for _ in range(60):
            yield b"\0" * 4096  # 240 KiB: over the 2 x 60,000 + 64 KiB bytes that /verify allows

    response = client.post("/verify", content=body(),
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_unexpected_errors_are_json_500_without_traceback(service, monkeypatch):
    _, verifier, _, _ = service
    app = create_app(verifier, None, LIMITS)
    monkeypatch.setattr(verifier, "verify", lambda a, b: 1 / 0)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = post_verify(client, face_bytes(1), face_bytes(2))
    assert response.status_code == 500 and response.json()["detail"].startswith("internal error (ZeroDivisionError)")
    assert "Traceback" not in response.text


def test_no_face_from_the_face_step_is_a_422(tmp_path):
    import test_verifier  # registers the "test-mirror" face step, which can refuse every image
    assert test_verifier._Mirror
    model = build_tiny_model(tmp_path / "m.pt", preprocess={"kind": "test-mirror", "size": 32, "refuse": True})
    with TestClient(create_app(FaceVerifier.load(model, device="cpu", runtime="torch"), None, LIMITS)) as client:
        response = post_verify(client, face_bytes(1), face_bytes(2))
    assert response.status_code == 422 and response.json()["detail"] == "no face found in the image"


def test_100_sequential_and_20_concurrent_verify_calls_match_the_python_api(service, monkeypatch):
    client, verifier, _, _ = service
    images = [face_bytes(seed) for seed in range(10)]
    pairs = [(images[i % 10], images[(3 * i + 1) % 10]) for i in range(100)]
    expected = [verifier.verify(a, b).to_dict() for a, b in pairs]
    # The model was loaded once, before the app: no request may load it again.
    monkeypatch.setattr(FaceVerifier, "load", classmethod(lambda *a, **k: pytest.fail("model loaded again")))
    for (a, b), want in zip(pairs, expected):
        response = post_verify(client, a, b)
        assert response.status_code == 200 and response.json() == want
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda pair: post_verify(client, *pair), pairs[:20]))
    assert [r.status_code for r in answers] == [200] * 20
    assert [r.json() for r in answers] == expected[:20]


def test_serve_command_loads_once_and_hands_the_app_to_uvicorn(service, monkeypatch, capsys):
    import uvicorn
    _, _, _, root = service
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: started.update(app=app, host=host, port=port))
    assert main(["faces", "serve", "--model", str(root / "model.pt"), "--index", str(root / "idx"),
                 "--port", "8123", "--max-upload-mb", "0.5", "--max-pixels", "2000000"]) == 0
    assert (started["host"], started["port"]) == ("127.0.0.1", 8123)
    assert "http://127.0.0.1:8123/" in capsys.readouterr().out
    with TestClient(started["app"]) as client:
        health = client.get("/healthz").json()
    assert health["index"]["images"] == 6
    assert health["limits"]["max_upload_bytes"] == 524_288 and health["limits"]["max_pixels"] == 2_000_000
    other = build_tiny_model(root / "other.pt", seed=3)
    assert main(["faces", "serve", "--model", str(other), "--index", str(root / "idx"), "--runtime", "torch"]) == 2
    assert "built with another model" in capsys.readouterr().err


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels and holds none: Pillow's decompression-bomb
    guard fires on the header alone, before any limit of ours could read the size."""
    import struct
    import zlib
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def test_an_image_over_pillows_bomb_limit_is_413_not_422(service):
    client, _, gallery, _ = service
    good = (gallery / "person00" / "0.png").read_bytes()
    for side in (10_000, 20_000):  # over Pillow's warning (~89 Mpx) and error (~179 Mpx) limits
        response = post_verify(client, good, png_header_only(side, side))
        assert response.status_code == 413, response.json()
        assert response.json()["detail"].startswith("image2: image exceeds Pillow's decompression-bomb limit")


def test_a_running_service_sees_index_changes_without_a_restart(tmp_path):
    from cnnlab.verifier import add_to_index, remove_from_index
    model = build_tiny_model(tmp_path / "model.pt")
    verifier = FaceVerifier.load(model, device="cpu")
    build_index(verifier, make_gallery(tmp_path / "g", people=2, per_person=2), tmp_path / "idx", progress=False)
    with TestClient(create_app(verifier, GalleryIndex.open(tmp_path / "idx"), LIMITS)) as client:
        assert client.get("/healthz").json()["index"]["images"] == 4
        more = make_gallery(tmp_path / "more", people=1, per_person=3, seed=7)
        add_to_index(tmp_path / "idx", more, verifier, progress=False)  # another process, say
        assert client.get("/healthz").json()["index"]["images"] == 7
        query = (more / "person00" / "2.png").read_bytes()
        found = client.post("/search", files={"image": ("q.png", query, "image/png")}, data={"k": "7"}).json()
        assert found["matches"][0]["name"] == "person00/2.png" and len(found["matches"]) == 7
        remove_from_index(tmp_path / "idx", paths=[more])
        assert client.get("/healthz").json()["index"]["images"] == 4


def test_serve_on_a_busy_port_is_one_line_before_loading(service, monkeypatch, capsys):
    import socket

    import cnnlab.cli.faces_use as faces_use
    _, _, _, root = service
    monkeypatch.setattr(faces_use, "load_verifier", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert main(["faces", "serve", "--model", str(root / "model.pt"), "--port", str(port)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no "serving on ..." line
    assert captured.err.startswith(f"cnnlab: error: cannot listen on 127.0.0.1:{port}: ") and \
        captured.err.count("\n") == 1


def test_search_of_an_empty_index_says_it_is_empty(service, tmp_path, capsys):
    from cnnlab.verifier import remove_from_index
    _, verifier, gallery, _ = service
    build_index(verifier, gallery / "person00", tmp_path / "idx", progress=False)
    remove_from_index(tmp_path / "idx", paths=[gallery / "person00"])
    assert main(["faces", "search", str(tmp_path / "idx"), str(gallery / "person01" / "0.png")]) == 2
    assert capsys.readouterr().err == (f"cnnlab: error: {tmp_path / 'idx'} is empty: add faces with "
                                       f"`cnnlab faces index add {tmp_path / 'idx'} DIR`\n")


def test_answers_show_no_server_paths_unless_asked(service, tmp_path):
    client, verifier, gallery, root = service
    health = client.get("/healthz").json()
    assert health["model"]["model"] == "model.pt" and health["index"]["index"] == "idx"
    assert health["index"]["model"] == "model.pt" and str(root) not in json.dumps(health)
    query = (gallery / "person01" / "1.png").read_bytes()
    found = client.post("/search", files={"image": ("q.png", query, "image/png")}, data={"k": "2"}).json()
    assert "path" not in found["matches"][0] and found["matches"][0]["name"] == "person01/1.png"
    assert str(root) not in json.dumps(found)
    index = GalleryIndex.open(root / "idx")
    with TestClient(create_app(verifier, index, LIMITS, show_paths=True)) as operator:
        assert operator.get("/healthz").json()["model"]["model"] == str(verifier.source)
        found = operator.post("/search", files={"image": ("q.png", query, "image/png")}, data={"k": "1"}).json()
        assert found["matches"][0]["path"] == str((gallery / "person01" / "1.png").resolve())


# ---------------------------------------------------------------------------- issue 32: paths, a broken index, k
def server_paths(*paths) -> list[str]:
    """The absolute forms of the server's folders that no answer may carry."""
    import os
    return sorted({str(q) for p in paths for q in (p, p.resolve(), os.path.abspath(p))}, key=len, reverse=True)


def every_answer(client, query: bytes) -> dict[str, object]:
    """One response of every route, good requests and refused ones."""
    image = {"image": ("q.png", query, "image/png")}
    return {
        "page": client.get("/"), "docs": client.get("/docs"), "openapi": client.get("/openapi.json"),
        "healthz": client.get("/healthz"), "verify": post_verify(client, query, query, crops="true"),
        "verify not an image": post_verify(client, b"text", query),
        "embed": client.post("/embed", files=[("images", ("x.png", query, "image/png"))]),
        "search": client.post("/search", files=image, data={"k": "3"}),
        "search bad k": client.post("/search", files=image, data={"k": "0"}),
        "unknown route": client.get("/nothing/here"),
    }


def test_no_answer_of_any_route_shows_a_server_path(tmp_path):
    """Item 2: /openapi.json and /docs (the model's path in the description), the 500 of a
    library error and the answers while the index is broken carry names only."""
    from cnnlab.core.errors import CnnlabError
    model = build_tiny_model(tmp_path / "models" / "model.pt")
    verifier = FaceVerifier.load(model, device="cpu", runtime="torch")
    build_index(verifier, make_gallery(tmp_path / "g", people=2, per_person=2), tmp_path / "idx", progress=False)
    private = server_paths(tmp_path)
    query = (tmp_path / "g" / "person00" / "0.png").read_bytes()
    with TestClient(create_app(verifier, GalleryIndex.open(tmp_path / "idx"), LIMITS),
                    raise_server_exceptions=False) as client:
        answers = every_answer(client, query)
        assert "model.pt" in answers["openapi"].json()["info"]["description"]
        (tmp_path / "idx" / "index.json").write_text("{ not json")  # the index breaks while serving
        answers |= {f"broken {k}": v for k, v in every_answer(client, query).items()}
        original = verifier.verify

        def fails(*a, **k):
            raise CnnlabError(f"{tmp_path / 'models' / 'model.pt'} cannot be read ({tmp_path}/x/y.bin)")
        verifier.verify = fails
        try:
            answers["verify 500"] = post_verify(client, query, query)
        finally:
            verifier.verify = original
    assert answers["verify 500"].status_code == 500 and "model.pt cannot be read" in answers["verify 500"].text
    assert answers["broken healthz"].status_code == 200 and answers["broken search"].status_code == 503
    for name, response in answers.items():
        assert not [p for p in private if p in response.text], (name, response.text[:300])


def test_show_paths_keeps_them_in_the_description(service):
    _, verifier, _, _ = service
    with TestClient(create_app(verifier, None, LIMITS, show_paths=True)) as operator:
        assert str(verifier.source) in operator.get("/openapi.json").json()["info"]["description"]


def test_an_index_removed_then_restored_never_stops_healthz_and_search_comes_back(tmp_path):
    """Item 3: /healthz answers 200 throughout and says the index's state; /search is 503 with
    a reason for an API client (no command-line advice) while the index is gone, damaged or
    rebuilt with another model, and 200 again once it is back, without a restart."""
    import shutil
    model = build_tiny_model(tmp_path / "model.pt")
    verifier = FaceVerifier.load(model, device="cpu", runtime="torch")
    build_index(verifier, make_gallery(tmp_path / "g", people=2, per_person=2), tmp_path / "idx", progress=False)
    query = (tmp_path / "g" / "person01" / "1.png").read_bytes()

    def search():
        return client.post("/search", files={"image": ("q.png", query, "image/png")}, data={"k": "2"})

    def state():
        response = client.get("/healthz")
        assert response.status_code == 200
        return response.json()["index"]

    def refused(response, words: str):
        assert response.status_code == 503 and response.headers["retry-after"], response.text
        detail = response.json()["detail"]
        assert words in detail and "cnnlab " not in detail and "--" not in detail, detail
        return detail

    with TestClient(create_app(verifier, GalleryIndex.open(tmp_path / "idx"), LIMITS)) as client:
        first = state()
        assert first["status"] == "ok" and first["images"] == 4 and search().status_code == 200
        shutil.move(tmp_path / "idx", tmp_path / "away")                   # removed
        gone = state()
        assert gone["status"] == "unavailable" and "index.json is missing" in gone["reason"]
        refused(search(), "index.json is missing")
        assert post_verify(client, query, query).status_code == 200        # the rest of the service goes on
        shutil.move(tmp_path / "away", tmp_path / "idx")                   # restored
        assert state()["status"] == "ok" and search().json()["matches"][0]["name"] == "person01/1.png"

        good = (tmp_path / "idx" / "index.json").read_bytes()
        (tmp_path / "idx" / "index.json").write_text("{ half a file")     # damaged
        assert state()["status"] == "unavailable" and "not valid JSON" in state()["reason"]
        refused(search(), "not valid JSON")
        (tmp_path / "idx" / "index.json").write_bytes(good)                # repaired
        assert state()["status"] == "ok" and search().status_code == 200

        other = FaceVerifier.load(build_tiny_model(tmp_path / "other.pt", seed=5), device="cpu", runtime="torch")
        shutil.rmtree(tmp_path / "idx")
        build_index(other, tmp_path / "g", tmp_path / "idx", progress=False)  # rebuilt with another model
        refused(search(), "another model")
        assert state()["status"] == "unavailable"
        shutil.rmtree(tmp_path / "idx")
        build_index(verifier, tmp_path / "g", tmp_path / "idx", progress=False)
        assert search().status_code == 200 and state()["images"] == 4


def test_k_above_the_gallery_returns_all_of_it_in_the_service_and_the_cli(service, capsys):
    """Item 4: one rule for both: k up to max_k (the limit /healthz shows), and more than the
    gallery holds is the whole gallery, ranked."""
    client, _, gallery, root = service
    query = (gallery / "person01" / "1.png").read_bytes()

    def search(k):
        return client.post("/search", files={"image": ("q.png", query, "image/png")}, data={"k": str(k)})

    max_k = client.get("/healthz").json()["limits"]["max_k"]
    assert max_k == LIMITS.max_k == 100
    for k in (7, max_k):
        answer = search(k).json()
        assert len(answer["matches"]) == 6 and answer["gallery_images"] == 6
    assert search(max_k + 1).status_code == 422 and f"at most {max_k}" in search(max_k + 1).json()["detail"]
    assert search(0).status_code == 422
    assert main(["faces", "search", str(root / "idx"), str(gallery / "person01" / "1.png"), "-k", "7", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)["results"][0]["matches"]
    served = search(7).json()["matches"]
    assert [m["name"] for m in cli] == [m["name"] for m in served] and len(cli) == 6


def test_the_page_claims_a_calibrated_threshold_only_for_a_model_with_one(service, tmp_path):
    """Item 6: a model without a threshold gets a page that says it cannot decide, and /verify
    answers its distance with threshold and verdict null (not a 500)."""
    client, _, _, _ = service
    assert "against its calibrated threshold" in client.get("/").text
    bare = FaceVerifier.load(build_tiny_model(tmp_path / "bare.pt", threshold=None), device="cpu", runtime="torch")
    with TestClient(create_app(bare, None, LIMITS)) as uncalibrated:
        page = uncalibrated.get("/").text
        answer = post_verify(uncalibrated, face_bytes(1), face_bytes(2)).json()
    assert "against its calibrated threshold" not in page and "holds no calibrated threshold" in page
    assert answer["threshold"] is None and answer["same"] is None
    assert answer["distance"] == pytest.approx(bare.distance(face_bytes(1), face_bytes(2)), abs=1e-6)


def test_an_image_too_small_for_a_face_is_a_422(service):
    """Item 6: the centre crop refuses what the aligned step refuses (under 40 px)."""
    client, _, _, _ = service
    response = post_verify(client, png_of_size(1, 1), face_bytes(1))
    assert response.status_code == 422 and "1 x 1 pixels" in response.json()["detail"]


@pytest.mark.parametrize("flags, words", [
    (["--port", "99999"], "a port is a number from 1 to 65535, got 99999"),
    (["--port", "0"], "must be >= 1"),
])
def test_serve_with_an_impossible_port_is_one_line_exit_2(service, capsys, flags, words):
    _, _, _, root = service
    with pytest.raises(SystemExit) as stop:
        main(["faces", "serve", "--model", str(root / "model.pt"), *flags])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and words in err and err.count("\n") == 1


def test_serve_on_a_host_that_is_not_here_blames_the_host_not_the_port(service, monkeypatch, capsys):
    import cnnlab.cli.faces_use as faces_use
    _, _, _, root = service
    monkeypatch.setattr(faces_use, "load_verifier", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    for host in ("256.1.1.1", "203.0.113.7"):  # not an address at all; an address of another machine
        assert main(["faces", "serve", "--model", str(root / "model.pt"), "--host", host]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"cnnlab: error: cannot listen on {host}:8000: ") and err.count("\n") == 1
        assert "another server on that port" not in err and "--host" in err
