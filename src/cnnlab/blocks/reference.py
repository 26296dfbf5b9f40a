"""The reference report's published figures per block, shown beside cnnlab's own in
`cnnlab blocks`, results.md and report.{md,html}: its whole Part 1 table.

Parameter counts are for the report's network at full width (docs/blocks.md's "BlockNet" section
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

# The report's findings, checked against a full run by `cnnlab.reports.claims`: B has the best
# validation accuracy, B's t-SNE separates the classes best, and the most common confusions,
# "consistent across most models", are automobile vs airplane and dog vs horse.
REPORT_BEST_BLOCK = "B"
REPORT_COMMON_CONFUSIONS: tuple[tuple[str, str], ...] = (("airplane", "automobile"), ("dog", "horse"))
