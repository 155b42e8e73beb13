"""Validation during training: the metrics of the validation split (``val/...``), the
operating point chosen on it, and the epoch ``--select-by`` selects.

Each evaluation of a run with a validation split routes it twice from one forward pass: at
offset 0, whose curve gives the operating point's offset (``l2d.evaluation.operating_point``),
then at that offset, whose metrics are logged as ``val/<test metric>`` (``val/coverage`` for
the coverage) and compared by ``--select-by``. The test split is routed at the same offset.
"""

import dataclasses
import math

from l2d.config import LAST_EPOCH, SELECTABLE_METRICS, SelectionOptions
from l2d.evaluation.evaluate import evaluate_predictions, predict_split
from l2d.evaluation.metrics import AUC, COVERAGE, summarise
from l2d.evaluation.operating_point import operating_offset

VALIDATION = "val/"
# The operating point's offset, logged with the metrics of every evaluation.
OFFSET = "operating_point/offset"
# Logged once a run with --select-by ends: the epoch selected, and the test metrics there.
SELECTED = "selected/"
SELECTED_EPOCH = "selected/epoch"


def validation_name(metric: str) -> str:
    """``val/<metric>``; the test split's ``coverage/test`` is ``val/coverage``."""
    return VALIDATION + ("coverage" if metric == COVERAGE else metric)


@dataclasses.dataclass(frozen=True)
class Validation:
    metrics: dict[str, float]  # val/... names, with the offset under OFFSET
    offset: float  # the operating point's offset on the classifier's score


def validate_epoch(predict_step, state, split, images, *, num_classes: int, batch_size: int,
                   runtime, evaluation, selection: SelectionOptions, parallel) -> Validation:
    """The validation metrics of ``state`` at the operating point it chooses on ``split``."""
    per_input = predict_split(predict_step, state, split, images, batch_size=batch_size,
                              runtime=runtime, parallel=parallel)
    at_zero = evaluate_predictions(per_input, split, num_classes=num_classes,
                                   evaluation=evaluation)
    offset = operating_offset(at_zero.curve, selection.operating_point)
    chosen = at_zero if offset == 0 else evaluate_predictions(
        per_input, split, num_classes=num_classes, evaluation=evaluation, offset=offset)
    metrics = {**summarise(chosen.counts), AUC: chosen.curve.area()}
    return Validation({**{validation_name(k): v for k, v in metrics.items()}, OFFSET: offset},
                      offset)


@dataclasses.dataclass(frozen=True)
class Selected:
    """The best epoch so far by ``--select-by``: its value and its operating point's offset."""

    epoch: int
    value: float
    offset: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict | None) -> "Selected | None":
        return None if not values else cls(int(values["epoch"]), float(values["value"]),
                                           float(values["offset"]))


def improves(value: float, best: Selected | None, select_by: str) -> bool:
    """Whether an epoch of validation metric ``value`` replaces ``best``: strictly better (the
    earlier epoch wins a tie); a NaN never does."""
    if select_by == LAST_EPOCH or math.isnan(value):
        return False
    if best is None:
        return True
    return value > best.value if SELECTABLE_METRICS[select_by] else value < best.value
