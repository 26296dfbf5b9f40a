"""The reference report's published figures per block, shown beside cnnlab's own in
`cnnlab blocks`, results.md and report.{md,html}.

Parameter counts are for the report's network at full width (issue 12 quotes them; the
README's "BlockNet" section derives the network from them). E's count is the one cnnlab does
not reproduce: its E has 1,443,050 parameters (+20,672).

Of the report's validation accuracies only its best one is on record (the project brief: block
B, spatial attention, 89.27% after ~25 minutes of training; the others span 79-89% without a
per-block figure). The tables print "-" for the others until a sourced figure is added here,
as a fraction 0..1.
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

REPORT_VAL_ACC: dict[str, float] = {"B": 0.8927}


def reference_note() -> str:
    """One sentence for the results tables saying what the report columns hold."""
    missing = [b for b in REPORT_PARAMS if b not in REPORT_VAL_ACC]
    note = ("Report columns: the reference report's published figures; its parameter counts are "
            "for the full-width network (width multiplier 1.0)")
    if missing:
        note += f"; its validation accuracy is not on record for {', '.join(missing)} (shown as -)"
    return note + "."
