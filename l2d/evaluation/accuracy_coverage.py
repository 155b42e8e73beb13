"""Accuracy-coverage curves: the system's accuracy when an offset is added to the classifier's
score, swept from "every input deferred" to "every input kept".

With margin m_i = classifier score - best expert score, an offset b makes the system keep input
i iff m_i + b > 0 (on a tie the expert wins, as in the test-time argmax). Sorting the inputs by
margin, each achievable coverage keeps the inputs of the largest margins, so the curve is exact:
one point per distinct margin value plus "nothing kept", no grid. The default decision (b = 0,
the argmax routing) is one of its points.

Each point also carries an offset that realises it: 0 for the default decision's point, else
the midpoint between the margins of the last input kept and the first deferred (one score unit
past the extreme margin at either end). Chosen on a validation split, that offset is the
operating point applied to new inputs (``l2d.evaluation.operating_point``). Pure NumPy; inputs
of a whole split.
"""

import dataclasses

import numpy as np

# The artifact holding the latest curve of a run, logged at every evaluation.
CURVE_FILE = "accuracy_coverage.json"
# How far past the largest (smallest) margin the offset of "all kept" ("none kept") lies.
END_OFFSET = 1.0


@dataclasses.dataclass(frozen=True)
class AccuracyCoverageCurve:
    coverage: np.ndarray  # [P] share of inputs kept by the classifier, from 0 up to 1.
    accuracy: np.ndarray  # [P] system accuracy at that coverage.
    offset: np.ndarray  # [P] an offset b of the classifier's score that gives that point.

    def area(self) -> float:
        """Area under accuracy over coverage in [0, 1] (trapezoids between the points)."""
        return float(np.trapezoid(self.accuracy, self.coverage))

    def to_json(self) -> dict[str, list[float] | float]:
        return {"coverage": self.coverage.tolist(), "accuracy": self.accuracy.tolist(),
                "offset": self.offset.tolist(), "auc": self.area()}


def accuracy_coverage_curve(margin: np.ndarray, clf_correct: np.ndarray,
                            deferred_correct: np.ndarray) -> AccuracyCoverageCurve:
    """The exact curve of N inputs (each argument ``[N]``, N >= 1).

    ``clf_correct`` and ``deferred_correct`` say whether the classifier and the best-scored
    expert are right on each input. An input of margin +inf has no expert to defer to: the
    curve then starts at the coverage of those inputs.
    """
    margin = np.asarray(margin, np.float64)
    if margin.size == 0:
        raise ValueError("an accuracy-coverage curve needs at least one input")
    order = np.argsort(-margin, kind="stable")
    margin = margin[order]
    kept_right = np.concatenate([[0.0], np.cumsum(np.asarray(clf_correct, np.float64)[order])])
    deferred = np.asarray(deferred_correct, np.float64)[order]
    # Right among the inputs not kept when the first j are kept: suffix sums.
    deferred_right = np.concatenate([np.cumsum(deferred[::-1])[::-1], [0.0]])
    # Keeping the first j inputs is achievable when j = 0, j = N, or the j-th and (j+1)-th
    # margins differ (inputs with equal margins are kept or deferred together).
    # Inputs of margin +inf (no expert to defer to) are kept at every offset.
    always_kept = int(np.sum(margin == np.inf))
    boundaries = np.flatnonzero(margin[:-1] != margin[1:]) + 1
    kept = np.unique(np.concatenate([[always_kept], boundaries[boundaries > always_kept],
                                     [margin.size]]))
    return AccuracyCoverageCurve(coverage=kept / margin.size,
                                 accuracy=(kept_right[kept] + deferred_right[kept]) / margin.size,
                                 offset=point_offsets(margin, kept))


def point_offsets(sorted_margin: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``[P]``: an offset b that keeps exactly the first ``kept[p]`` of the margins (sorted
    from the largest), i.e. one in (-m[kept - 1], -m[kept]]: 0 where that interval holds it."""
    n = sorted_margin.size
    last_kept = np.where(kept > 0, sorted_margin[np.maximum(kept - 1, 0)], np.inf)
    first_deferred = np.where(kept < n, sorted_margin[np.minimum(kept, n - 1)], -np.inf)
    low, high = -last_kept, -first_deferred
    with np.errstate(invalid="ignore"):
        middle = np.where(np.isfinite(low) & np.isfinite(high), (low + high) / 2,
                          np.where(np.isfinite(high), high - END_OFFSET, low + END_OFFSET))
    middle = np.where(np.isfinite(middle), middle, 0.0)
    return np.where((low < 0) & (0 <= high), 0.0, middle)
