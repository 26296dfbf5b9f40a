"""Siamese face verification on LFW: the recipe (`config`), the frozen feature cache
(`features`), the engine task (`task`), the LFW runs (`protocols`: one training, View 1;
`view2`: the ten folds) and the margin study (`margins`).

The model is `cnnlab.models.siamese.SiameseNet` (Bromley et al. 1993) trained with the
contrastive loss of Hadsell, Chopra and LeCun (2006) on pairs formed inside P x K batches
(Hermans, Beyer and Leibe 2017). Runs follow LFW's protocols (Huang et al. 2007). Nothing here
draws: runs write files, and the CLI or the demo plots from them afterwards.
"""
from cnnlab.tasks.faces.config import (
    CACHE_MODES,
    PRESETS,
    FaceTrainConfig,
    cache_stage,
    frozen_prefix,
    preset_config,
    set_trainable,
)
from cnnlab.tasks.faces.features import FeatureMemo, PrefixFeatures, cached_prefix, prefix_key
from cnnlab.tasks.faces.margins import compare_margins, margins_markdown, outlier_counts, write_margins_report
from cnnlab.tasks.faces.protocols import (
    METRICS_FILE,
    MODEL_FILE,
    TEST_EMBEDDINGS,
    TEST_PAIRS,
    TrainedVerifier,
    backbone_features,
    default_lfw_root,
    embed_images,
    format_retrieval,
    format_test,
    load_lfw_images,
    pair_distances,
    record_plots,
    save_test_outputs,
    test_report,
    train_verifier,
    train_view1,
    untrained_baseline,
)
from cnnlab.tasks.faces.task import FaceBatch, FaceVerificationTask
from cnnlab.tasks.faces.view2 import finished_view2_folds, train_view2, view2_summary

__all__ = [
    "CACHE_MODES", "PRESETS", "FaceTrainConfig", "cache_stage", "frozen_prefix", "preset_config", "set_trainable",
    "FeatureMemo", "PrefixFeatures", "cached_prefix", "prefix_key",
    "compare_margins", "margins_markdown", "outlier_counts", "write_margins_report",
    "METRICS_FILE", "MODEL_FILE", "TEST_EMBEDDINGS", "TEST_PAIRS", "TrainedVerifier", "backbone_features",
    "default_lfw_root", "embed_images", "format_retrieval", "format_test", "load_lfw_images", "pair_distances", "record_plots",
    "save_test_outputs", "test_report", "train_verifier", "train_view1", "train_view2", "untrained_baseline",
    "view2_summary", "finished_view2_folds", "FaceBatch", "FaceVerificationTask",
]
