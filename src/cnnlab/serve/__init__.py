"""The HTTP service of `cnnlab faces serve`: a FastAPI app over one `FaceVerifier` (and
optionally a gallery index), with a page at `/` for comparing two photos."""
from cnnlab.serve.app import ServeLimits, create_app

__all__ = ["ServeLimits", "create_app"]
