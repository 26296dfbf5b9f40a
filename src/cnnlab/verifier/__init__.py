"""Use a trained face model: `FaceVerifier` (embed, distance, verify, identify) and the
persistent gallery index it searches. The CLI's verify/search/index commands and the HTTP
service (`cnnlab.serve`) are thin front ends over these."""
from cnnlab.verifier.api import FaceVerifier, Match, VerifyResult, model_fingerprint, resolve_model_path
from cnnlab.verifier.images import (DEFAULT_MAX_PIXELS, FACE_PREPROCESSING, CentreCrop, ImageRejected, ImageTooLarge,
                                    NoFaceFound, preprocessing_from_extra, to_rgb)
from cnnlab.verifier.index import (EnrolReport, GalleryFile, GalleryIndex, IndexModelMismatch, add_to_index,
                                   build_index, embed_files, scan_gallery)

__all__ = ["FaceVerifier", "VerifyResult", "Match", "model_fingerprint", "resolve_model_path",
           "DEFAULT_MAX_PIXELS", "FACE_PREPROCESSING", "CentreCrop", "ImageRejected", "ImageTooLarge", "NoFaceFound",
           "preprocessing_from_extra", "to_rgb", "EnrolReport", "GalleryFile", "GalleryIndex", "IndexModelMismatch",
           "add_to_index", "build_index", "embed_files", "scan_gallery"]
