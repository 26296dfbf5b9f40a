"""Text the results tables and reports share: training times written the report's way, what
the report columns hold, and the warning for a table trained below the report's budget."""
from __future__ import annotations

from cnnlab.blocks.reference import REPORT_EPOCHS, REPORT_PARAMS, REPORT_VAL_ACC


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
    learn, not by where they end (docs/cifar.md shows how far the `quick` table's ranking
    moves between seeds and precisions)."""
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
            "report's 30 epochs at full width; for that, see the full-budget table in the README "
            "and BENCHMARKS.md.")
