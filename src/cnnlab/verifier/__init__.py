"""Use a trained face model: `FaceVerifier` (embed, distance, verify, identify) and the
persistent gallery index it searches, and its score on an identity folder it never trained on.
The CLI's verify/search/index/score commands and the HTTP service (`cnnlab.serve`) are thin
front ends over these."""
from cnnlab.verifier.api import FaceVerifier, Match, VerifyResult, model_fingerprint, resolve_model_path
from cnnlab.verifier.enrol import add_to_index, build_index, prune_index, remove_from_index
from cnnlab.verifier.folder import score_identity_folder
from cnnlab.verifier.images import (
                                    DEFAULT_MAX_PIXELS,
                                    FACE_PREPROCESSING,
                                    AlignedFace,
                                    CentreCrop,
                                    ImageRejected,
                                    ImageTooLarge,
                                    NoFaceFound,
                                    preprocessing_from_extra,
                                    to_rgb,
)
from cnnlab.verifier.index import (
                                   EnrolCounts,
                                   GalleryFile,
                                   GalleryIndex,
                                   GalleryScan,
                                   IndexModelMismatch,
                                   embed_files,
                                   scan_gallery,
)
from cnnlab.verifier.tally import FileTally, LeftOut

__all__ = ["FaceVerifier", "VerifyResult", "Match", "model_fingerprint", "resolve_model_path",
           "DEFAULT_MAX_PIXELS", "FACE_PREPROCESSING", "AlignedFace", "CentreCrop", "ImageRejected", "ImageTooLarge",
           "NoFaceFound", "preprocessing_from_extra", "to_rgb", "EnrolCounts", "GalleryFile", "GalleryIndex",
           "GalleryScan", "IndexModelMismatch", "add_to_index", "build_index", "prune_index", "remove_from_index",
           "embed_files", "scan_gallery", "score_identity_folder", "FileTally", "LeftOut"]
