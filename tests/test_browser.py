"""The page at `/`, opened by a real browser: Debian's chromium in headless mode loads it from
a uvicorn server on 127.0.0.1, runs its script (which fills in the model line from /healthz)
and takes a screenshot, which must show the rendered page, not a blank one.

chromium comes from `.ci/run` (apt-get) when it is missing; where it cannot be had, this test
is skipped and says why."""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time

import numpy as np
import pytest
from PIL import Image

uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from cnnlab.serve import create_app  # noqa: E402
from cnnlab.verifier import FaceVerifier  # noqa: E402
from face_models import build_tiny_model, face_bytes  # noqa: E402

BROWSERS = ("chromium", "chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                  "--no-first-run", "--virtual-time-budget=5000"]


def find_chromium() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on this machine (`apt-get install -y chromium`; .ci/run installs it): "
                "the browser test of the page did not run")


# Test-side only: the page plus a script that does what a person does (pick two photos, press
# Compare). Browsers let a script fill a file input through DataTransfer, not through a path.
PICK_AND_COMPARE = """
<script>
(async () => {
  for (const n of [1, 2]) {
    const blob = await (await fetch("/test-face/" + n)).blob();
    const picked = new DataTransfer();
    picked.items.add(new File([blob], "face" + n + ".png", {type: "image/png"}));
    const input = document.getElementById("image" + n);
    input.files = picked.files;
    input.dispatchEvent(new Event("change"));
  }
  document.getElementById("compare").click();
})();
</script>
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from fastapi.responses import HTMLResponse, Response
    model = build_tiny_model(tmp_path_factory.mktemp("browser") / "model.pt", threshold=0.75)
    app = create_app(FaceVerifier.load(model, device="cpu", runtime="torch"))

    @app.get("/test-page", response_class=HTMLResponse)
    def test_page() -> str:
        from cnnlab.serve.app import _page
        return _page(has_threshold=True).replace("</body>", PICK_AND_COMPARE + "</body>")

    @app.get("/test-face/{n}")
    def test_face(n: int) -> Response:
        return Response(face_bytes(n), media_type="image/png")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


def run_chromium(*args: str) -> subprocess.CompletedProcess:
    # A profile of its own: two browsers of parallel test workers must not share one.
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([find_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)


def test_the_page_renders_in_headless_chromium(server, tmp_path):
    shot = tmp_path / "page.png"
    result = run_chromium(f"--screenshot={shot}", "--window-size=1000,700", server)
    assert shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert pixels.shape[:2] == (700, 1000)
    # Not blank: many colours, and the header's navy band (#1d3557) across the top.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20
    header = pixels[5:40, 100:900]
    assert np.median(np.abs(header - np.array([0x1D, 0x35, 0x57])).max(axis=2)) < 10
    # The script ran against the server: the model line comes from GET /healthz.
    dom = run_chromium("--dump-dom", server).stdout
    assert "Same person?" in dom and "euclidean distance, threshold 0.7500" in dom


def test_picking_two_photos_shows_the_verdict_distance_and_faces(server, tmp_path):
    """The page's own script, driven as a person would: the answer of /verify is displayed."""
    dom = run_chromium("--dump-dom", server + "test-page").stdout
    assert (('id="verdict" class="same">Same person' in dom)
            or ('id="verdict" class="different">Different people' in dom))
    assert "euclidean distance 0." in dom and "threshold 0.7500" in dom
    assert dom.count('src="data:image/png;base64,') == 2  # the two faces as the model saw them
    shot = tmp_path / "answer.png"
    run_chromium(f"--screenshot={shot}", "--window-size=1000,900", server + "test-page")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # photos and faces, not just text
