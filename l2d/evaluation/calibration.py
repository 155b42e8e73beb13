"""Calibration of a method's probability estimates: the classifier's top probability, and each
expert's estimated P(right | x) where the method makes one (``Decision.expert_correct``).

Estimates go into 15 equal-width bins of [0, 1] (bin b holds [b/15, (b+1)/15), the last also 1;
an estimate outside [0, 1], as the softmax surrogate's can be, is clipped into it). A bin's counts
(inputs, summed estimates, summed right answers) add over batches and hosts like every other
evaluation count, and

    ECE = sum_b |right_b - estimate_b| / n = sum_b (n_b / n) |accuracy_b - mean estimate_b|.

The reliability diagram plots, per non-empty bin, the accuracy against the mean estimate.
"""

import numpy as np

BINS = 15
# The evaluation's bins, logged beside the accuracy-coverage curve at every evaluation.
CALIBRATION_FILE = "calibration.json"


def bin_counts(estimate: np.ndarray, right: np.ndarray,
               include: np.ndarray | None = None) -> np.ndarray:
    """``[BINS, 3]`` float64: per bin, the inputs, their summed estimates and right answers,
    over the inputs in ``include`` (all when None)."""
    estimate = np.clip(np.asarray(estimate, np.float64), 0.0, 1.0)
    right = np.asarray(right, np.float64)
    if include is not None:
        estimate, right = estimate[include], right[include]
    index = np.minimum((estimate * BINS).astype(np.int64), BINS - 1)
    counts = np.zeros((BINS, 3))
    for column, values in enumerate((np.ones_like(estimate), estimate, right)):
        np.add.at(counts[:, column], index, values)
    return counts


def expected_calibration_error(counts: np.ndarray) -> float:
    """ECE of ``bin_counts``; NaN when no input was counted."""
    total = counts[:, 0].sum()
    if total == 0:
        return float("nan")
    return float(np.abs(counts[:, 2] - counts[:, 1]).sum() / total)


def reliability(counts: np.ndarray) -> dict[str, list]:
    """The reliability diagram's points: per bin, its inputs, their mean estimate and their
    accuracy (None for an empty bin)."""
    inputs = counts[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        means, accuracies = counts[:, 1] / inputs, counts[:, 2] / inputs
    return {"inputs": inputs.astype(np.int64).tolist(),
            "estimate": [None if n == 0 else float(m) for n, m in zip(inputs, means)],
            "accuracy": [None if n == 0 else float(a) for n, a in zip(inputs, accuracies)]}


def calibration_report(counts: dict[str, np.ndarray]) -> dict:
    """The JSON of an evaluation's bins (``l2d.evaluation.evaluate.tally``): the classifier's,
    and each expert's where the method estimates it (else an empty list)."""
    experts = counts.get("expert_calibration")
    return {"bins": BINS, "classifier": reliability(counts["clf_calibration"]),
            "experts": [] if experts is None else [reliability(bins) for bins in experts]}
