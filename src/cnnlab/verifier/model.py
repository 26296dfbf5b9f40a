"""What the gallery index, folder scoring and calibration need of a face model: a structural
type (`EmbeddingModel`), so that those modules depend on this small contract and not on
`FaceVerifier` (`cnnlab.verifier.api`), which uses them. A `FaceVerifier` is one."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from cnnlab.verifier.images import FacePreprocessing


class EmbeddingModel(Protocol):
    source: str | Path            # where the model was loaded from (recorded in an index)
    face: FacePreprocessing       # the model's face step: decoding a gallery runs it
    distance_name: str            # euclidean | cosine
    fingerprint: str              # weights + architecture + face step (an index's key)

    @property
    def input_size(self) -> int: ...

    @property
    def embedding_dim(self) -> int: ...

    @property
    def threshold(self) -> float: ...

    @property
    def has_threshold(self) -> bool: ...

    def embed_faces(self, faces: np.ndarray) -> np.ndarray: ...
