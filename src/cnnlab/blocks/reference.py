"""The reference report's published figures per block, shown beside cnnlab's own in
`cnnlab blocks`, results.md and report.{md,html}: its whole Part 1 table.

Parameter counts are for the report's network at full width (the README's "BlockNet" section
derives the network from them). E's count is the one cnnlab does
not reproduce: its E has 1,443,050 parameters (+20,672).

Each block trained 30 epochs; the report does not state its hardware. Its training accuracy is
its own measurement (we do not know on which images or in which mode it was taken); cnnlab's
is the running accuracy over the last epoch's augmented batches (`TRAIN_ACC_NOTE`).
Accuracies are fractions 0..1, times in seconds.
"""
from __future__ import annotations

REPORT_PARAMS: dict[str, int] = {
    "A": 7_771_434,
    "B": 7_773_994,
    "C": 7_901_130,
    "D": 8_623_402,
    "D-dw": 1_827_242,
    "E": 1_422_378,
}

REPORT_VAL_ACC: dict[str, float] = {
    "A": 0.8856, "B": 0.8927, "C": 0.886, "D": 0.8704, "D-dw": 0.7947, "E": 0.85130,
}

REPORT_TRAIN_ACC: dict[str, float] = {
    "A": 0.94162, "B": 0.94655, "C": 0.94550, "D": 0.9359, "D-dw": 0.8158, "E": 0.87067,
}

REPORT_TRAIN_TIME_S: dict[str, int] = {
    "A": 24 * 60 + 44, "B": 25 * 60 + 58, "C": 26 * 60 + 10, "D": 25 * 60 + 47, "D-dw": 23 * 60 + 45,
    "E": 25 * 60 + 49,
}

REPORT_EPOCHS = 30

# The report's findings, checked against a full run by `cnnlab.report_claims`: B has the best
# validation accuracy, B's t-SNE separates the classes best, and the most common confusions,
# "consistent across most models", are automobile vs airplane and dog vs horse.
REPORT_BEST_BLOCK = "B"
REPORT_COMMON_CONFUSIONS: tuple[tuple[str, str], ...] = (("airplane", "automobile"), ("dog", "horse"))


def minutes(seconds: float | None) -> str:
    """`24m 44s`, the report's way of writing a training time; `-` for none."""
    if seconds is None:
        return "-"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    return (f"{hours}h " if hours else "") + f"{rest // 60}m {rest % 60:02d}s"


def reference_note() -> str:
    """One sentence for the results tables saying what the report columns hold."""
    missing = [b for b in REPORT_PARAMS if b not in REPORT_VAL_ACC]
    note = ("Report columns: the reference report's published figures (each block trained "
            f"{REPORT_EPOCHS} epochs, hardware not stated); its parameter counts are "
            "for the full-width network (width multiplier 1.0)")
    if missing:
        note += f"; its validation accuracy is not on record for {', '.join(missing)} (shown as -)"
    return note + "."


def budget_caption(recipe: dict, data: dict) -> str | None:
    """A warning for a results table trained below the report's budget (fewer epochs, a
    narrower network or a training subset), else None. Short runs rank blocks by how fast they
    learn, not by where they end: in the 4-epoch quarter-width `quick` table B, the report's best
    block, comes out last in fp32 and fifth in bf16, and spans 41.9-54.8% over three seeds."""
    train, model = recipe.get("train", {}), recipe.get("model", {})
    short = []
    if train.get("epochs", REPORT_EPOCHS) < REPORT_EPOCHS:
        short.append(f"{train['epochs']} epoch{'s' if train['epochs'] != 1 else ''} instead of {REPORT_EPOCHS}")
    if model.get("width_multiplier", 1.0) != 1.0:
        short.append(f"width x{model['width_multiplier']:g}")
    if data.get("train_subset"):
        short.append(f"{data.get('train', data['train_subset']):,} training images")
    if not short:
        return None
    return ("Reduced budget (" + ", ".join(short) + "): these numbers do not rank the blocks. At this "
            "budget a block's accuracy says how fast it learns, not how good it is after the "
            "report's 30 epochs at full width; for that, see the full table in the README "
            "(\"Comparing blocks on CIFAR-10\") and BENCHMARKS.md.")
