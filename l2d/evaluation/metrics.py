"""Test metrics of every method, from summed evaluation counts, and their MLflow names.

The names are defined here once; the demo's printout, ``l2d plot`` and the tests use these
constants. (Training measurements are named by each method: ``Method.measurements``.)
"""

import math

import numpy as np

from l2d.evaluation.calibration import expected_calibration_error

ACCURACY = "accuracy"  # The system's accuracy.
COVERAGE = "coverage/test"  # Share of test inputs the classifier keeps.
CLF_ACCURACY = "clf_accuracy/all"  # The classifier alone, on every input.
CLF_ACCURACY_KEPT = "clf_accuracy/kept"  # The classifier on the inputs it keeps.
AUC = "accuracy_coverage/auc"  # Area under the accuracy-coverage curve.
# Expected calibration error of the classifier's top probability (l2d.evaluation.calibration).
CLF_ECE = "calibration/classifier/ece"


def expert_ece(k: int) -> str:
    """ECE of the method's estimate of P(expert k right), on the inputs k annotated."""
    return f"calibration/expert_{k}/ece"


def expert_share(k: int) -> str:
    return f"expert_{k}/share"  # Share of test inputs deferred to expert k.


def expert_accuracy_received(k: int) -> str:
    return f"expert_{k}/accuracy_received"  # Expert k on the inputs deferred to it.


def expert_accuracy_alone(k: int) -> str:
    return f"expert_{k}/accuracy_alone"  # Expert k on every input it annotated.


def missing_annotations(split: str, k: int) -> str:
    return f"missing/{split}/expert_{k}"  # Inputs of the split that expert k did not annotate.


def safe_ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when nothing was counted (e.g. an expert that got no input)."""
    return float(numerator) / float(denominator) if denominator > 0 else float("nan")


def summarise(counts: dict[str, np.ndarray]) -> dict[str, float]:
    """Turn summed counts (``l2d.evaluation.evaluate``) into the logged metrics."""
    samples = float(counts["samples"])
    num_experts = counts["expert_correct"].shape[0]
    routed, routed_correct = counts["routed"], counts["routed_correct"]
    metrics = {
        ACCURACY: safe_ratio(counts["system_correct"], samples),
        COVERAGE: safe_ratio(routed[-1], samples),
        CLF_ACCURACY: safe_ratio(counts["clf_correct"], samples),
        CLF_ACCURACY_KEPT: safe_ratio(routed_correct[-1], routed[-1]),
    }
    for k in range(num_experts):
        metrics[expert_share(k)] = safe_ratio(routed[k], samples)
        metrics[expert_accuracy_received(k)] = safe_ratio(routed_correct[k], routed[k])
        metrics[expert_accuracy_alone(k)] = safe_ratio(counts["expert_correct"][k],
                                                       counts["expert_present"][k])
    if "clf_calibration" in counts:
        metrics[CLF_ECE] = expected_calibration_error(counts["clf_calibration"])
    for k, bins in enumerate(counts.get("expert_calibration", ())):
        metrics[expert_ece(k)] = expected_calibration_error(bins)
    return metrics


def deferral_table(counts: dict[str, np.ndarray], options: list[str]) -> dict[str, list]:
    """Per true class: how many inputs went to each option (``options``: the experts' names,
    then the classifier's)."""
    columns = options
    table = counts["class_routed"].astype(np.int64)
    return {
        "class": list(range(table.shape[0])),
        **{column: table[:, j].tolist() for j, column in enumerate(columns)},
    }


# The summary lists every expert up to this many; of more, those who receive the most.
SUMMARY_EXPERTS = 8


def summary(metrics: dict[str, float], experts: list[str]) -> str:
    """The system against the classifier alone and each expert alone, for a person to read::

        system accuracy 0.997 at coverage 0.256 (share kept by the classifier)
        classifier alone 0.950; expert alice alone 0.532 (receives 0.373); ...
        deferral pays off: the system is more accurate than ...

    A value with nothing to count (an expert that annotated no test input) reads ``nan``. Of
    more than ``SUMMARY_EXPERTS`` experts, those who receive the most are listed.
    """
    system = metrics[ACCURACY]
    alone = [metrics[CLF_ACCURACY], *(metrics[expert_accuracy_alone(k)]
                                      for k in range(len(experts)))]
    known = [value for value in alone if not math.isnan(value)]
    verdict = ("deferral pays off: the system is more accurate than the classifier alone and "
               "than every expert alone" if known and system > max(known) else
               "deferral does not pay off here: the classifier or an expert alone is at least "
               "as accurate as the system")
    # Of many experts (a crowd), those who receive the most; the others' share together.
    listed = sorted(range(len(experts)), key=lambda k: -metrics[expert_share(k)])
    listed = sorted(listed[:SUMMARY_EXPERTS]) if len(experts) > SUMMARY_EXPERTS else listed
    others = [k for k in range(len(experts)) if k not in listed]
    rest = (f"; {len(others)} more experts receive "
            f"{sum(metrics[expert_share(k)] for k in others):.3f} together" if others else "")
    return (f"system accuracy {system:.3f} at coverage {metrics[COVERAGE]:.3f} (share kept by "
            f"the classifier)\nclassifier alone {metrics[CLF_ACCURACY]:.3f}; "
            + "; ".join(f"expert {experts[k]} alone {metrics[expert_accuracy_alone(k)]:.3f} "
                        f"(receives {metrics[expert_share(k)]:.3f})"
                        for k in (listed if others else range(len(experts))))
            + rest + f"\n{verdict}")


def metrics_line(metrics: dict[str, float]) -> str:
    """Every metric as ``name=value``, four decimals, NaN as ``nan``."""
    return ", ".join(f"{name}={value:.4f}" for name, value in metrics.items())
