"""Siamese face verification on LFW: the recipe (`config`), the frozen feature cache
(`features`), the engine task (`task`), one training with its selection and calibration
(`training`), the LFW runs (`view1`; `view2`: the ten folds), the training data and validation
set beside LFW's (`extra`) and the margin study (`margins`).

The model is `cnnlab.models.siamese.SiameseNet` (Bromley et al. 1993) trained with the
contrastive loss of Hadsell, Chopra and LeCun (2006) on pairs formed inside P x K batches
(Hermans, Beyer and Leibe 2017). Runs follow LFW's protocols (Huang et al. 2007). Nothing here
draws: runs write files, and the CLI or the demo plots from them afterwards.
"""
from cnnlab.tasks.faces.config import PRESETS, FaceTrainConfig, cache_stage, check_preset_data, preset_config
from cnnlab.tasks.faces.features import FeatureMemo, cached_prefix
from cnnlab.tasks.faces.margins import compare_margins, outlier_counts
from cnnlab.tasks.faces.task import FaceVerificationTask
from cnnlab.tasks.faces.training import METRICS_FILE, backbone_features, default_lfw_root, embed_images, train_verifier
from cnnlab.tasks.faces.view1 import format_retrieval, format_test, record_plots, train_view1, untrained_baseline
from cnnlab.tasks.faces.view2 import train_view2

# What callers outside tasks.faces use; anything else is imported from its module.
__all__ = [
    "PRESETS", "FaceTrainConfig", "cache_stage", "check_preset_data", "preset_config", "FeatureMemo", "cached_prefix",
    "compare_margins", "outlier_counts", "FaceVerificationTask", "METRICS_FILE", "backbone_features",
    "default_lfw_root", "embed_images", "train_verifier", "format_retrieval", "format_test", "record_plots",
    "train_view1", "untrained_baseline", "train_view2",
]
