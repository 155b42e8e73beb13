"""Expected calibration error: 15 equal-width bins, against a hand computation, and about 0 for
a perfectly calibrated synthetic estimate; the evaluation counts it per expert on the inputs the
expert annotated."""

import numpy as np

from l2d.annotations import MISSING
from l2d.evaluation import metrics
from l2d.evaluation.calibration import BINS, bin_counts, expected_calibration_error, reliability
from l2d.evaluation.evaluate import evaluate_outputs


def test_ece_matches_a_hand_computation():
    # Bins of width 1/15: 0.05 -> bin 0; 0.5 and 0.52 -> bin 7; 0.95 and 1.0 -> bin 14; 1.3 is
    # clipped to 1 -> bin 14.
    estimate = np.array([0.05, 0.5, 0.52, 0.95, 1.0, 1.3])
    right = np.array([0, 1, 0, 1, 0, 1])
    counts = bin_counts(estimate, right)
    assert counts.shape == (BINS, 3)
    np.testing.assert_allclose(counts[[0, 7, 14]], [[1, 0.05, 0], [2, 1.02, 1], [3, 2.95, 2]])
    # (|0 - 0.05| + |1 - 1.02| + |2 - 2.95|) / 6
    np.testing.assert_allclose(expected_calibration_error(counts), (0.05 + 0.02 + 0.95) / 6)
    points = reliability(counts)
    assert points["inputs"][7] == 2 and points["estimate"][1] is None
    np.testing.assert_allclose([points["estimate"][7], points["accuracy"][7]], [0.51, 0.5])
    assert np.isnan(expected_calibration_error(bin_counts(estimate, right, right < 0)))


def test_a_perfectly_calibrated_estimate_has_an_ece_of_about_zero():
    rng = np.random.default_rng(0)
    estimate = rng.uniform(size=200_000)
    right = rng.uniform(size=estimate.size) < estimate
    assert expected_calibration_error(bin_counts(estimate, right)) < 0.005
    # Overconfident by 0.2 where it can be: far from 0.
    assert expected_calibration_error(bin_counts(np.minimum(estimate + 0.2, 1), right)) > 0.15


def test_evaluation_measures_each_expert_on_the_inputs_it_annotated():
    labels = np.array([0, 1, 1, 0])
    expert_labels = np.array([[0, MISSING], [1, 0], [0, 1], [0, MISSING]])
    scores = np.zeros((4, 3))
    expert_correct = np.array([[0.9, 0.1], [0.9, 0.2], [0.1, 0.8], [0.9, 0.99]])
    evaluation = evaluate_outputs(scores, np.array([0, 0, 1, 1]), labels, expert_labels,
                                  num_classes=2, class_confidence=np.array([1.0, 0.6, 0.5, 0.5]),
                                  expert_correct=expert_correct)
    summary = metrics.summarise(evaluation.counts)
    # Expert 0 is right, right, wrong, right with estimates 0.9, 0.9, 0.1, 0.9: bins 1 and 13.
    np.testing.assert_allclose(summary[metrics.expert_ece(0)], (0.1 + 0.1 + 0.1 + 0.1) / 4)
    # Expert 1 annotated inputs 1 and 2 only (wrong at 0.2, right at 0.8).
    np.testing.assert_allclose(summary[metrics.expert_ece(1)], (0.2 + 0.2) / 2)
    # The classifier is right on inputs 0 and 2: bin 14 |1 - 1|, bin 9 |0 - 0.6|, bin 7
    # (0.5 right, 0.5 wrong) |1 - 1.0|.
    np.testing.assert_allclose(summary[metrics.CLF_ECE], (0 + 0.6 + 0.0) / 4)
