"""Accuracy-coverage curves: exact points, their ends, the default decision, ties and the area."""

import numpy as np
import pytest

from l2d.evaluation.accuracy_coverage import accuracy_coverage_curve
from l2d.evaluation.evaluate import evaluate_outputs

# Five inputs, two experts and the classifier (last column); scores, labels and annotations.
SCORES = np.array([[2.0, 0.0, 1.0],   # expert 0 best, margin -1
                   [0.0, 1.0, 3.0],   # classifier best, margin +2
                   [0.5, 0.2, 0.4],   # expert 0 best, margin -0.1
                   [0.0, 2.0, 2.5],   # classifier best, margin +0.5
                   [1.0, 0.0, 0.0]])  # expert 0 best, margin -1 (a tie with the first)
LABELS = np.array([1, 2, 0, 1, 2])
EXPERT_LABELS = np.array([[1, 0], [0, 0], [0, 1], [0, 0], [0, 2]])
CLASS_LOGITS = np.eye(3)[[0, 2, 1, 1, 2]]  # The classifier answers 0, 2, 1, 1, 2.


def curve_inputs():
    margin = SCORES[:, -1] - SCORES[:, :-1].max(-1)
    clf_correct = CLASS_LOGITS.argmax(-1) == LABELS
    best = SCORES[:, :-1].argmax(-1)
    deferred_correct = EXPERT_LABELS[np.arange(5), best] == LABELS
    return margin, clf_correct, deferred_correct


def test_ends_are_all_deferred_and_classifier_alone_and_the_default_point_is_on_it():
    margin, clf_correct, deferred_correct = curve_inputs()
    curve = accuracy_coverage_curve(margin, clf_correct, deferred_correct)
    # Each input to its best-scored expert: right on inputs 0 and 2 (expert 0 says 1, 0).
    all_deferred = np.mean([EXPERT_LABELS[i, SCORES[i, :-1].argmax()] == LABELS[i]
                            for i in range(5)])
    assert (curve.coverage[0], curve.accuracy[0]) == (0.0, all_deferred) == (0.0, 0.4)
    assert (curve.coverage[-1], curve.accuracy[-1]) == (1.0, np.mean(clf_correct)) == (1.0, 0.6)
    evaluation = evaluate_outputs(SCORES, CLASS_LOGITS.argmax(-1), LABELS, EXPERT_LABELS,
                                  num_classes=3)
    counts = evaluation.counts
    default = (counts["routed"][-1] / 5, counts["system_correct"] / 5)
    assert default == (0.4, 0.8)
    points = list(zip(curve.coverage.tolist(), curve.accuracy.tolist()))
    assert default in points
    np.testing.assert_allclose(evaluation.curve.accuracy, curve.accuracy)
    # Margins 2, 0.5, -0.1, -1, -1: the two equal margins are kept together (no 0.8 coverage).
    np.testing.assert_allclose(curve.coverage, [0, 0.2, 0.4, 0.6, 1.0])
    np.testing.assert_allclose(curve.accuracy, [0.4, 0.6, 0.8, 0.6, 0.6])
    # Trapezoids: 0.2 * (0.5 + 0.7 + 0.7) + 0.4 * 0.6.
    assert curve.area() == pytest.approx(0.62)
    assert curve.to_json()["auc"] == pytest.approx(0.62)


def test_points_are_exactly_those_of_a_sweep_over_every_offset():
    rng = np.random.default_rng(0)
    margin = np.round(rng.normal(size=200), 1)  # Rounded: many ties.
    clf_correct, deferred_correct = rng.random(200) < 0.6, rng.random(200) < 0.5
    curve = accuracy_coverage_curve(margin, clf_correct, deferred_correct)
    # Offsets just above each -margin, and one below all of them, reach every achievable split.
    offsets = np.concatenate([[-np.inf], np.sort(-margin) + 1e-9])
    swept = set()
    for offset in offsets:
        kept = margin + offset > 0
        swept.add((round(kept.mean(), 9),
                   round(np.where(kept, clf_correct, deferred_correct).mean(), 9)))
    assert {(round(c, 9), round(a, 9)) for c, a in zip(curve.coverage, curve.accuracy)} == swept
    assert np.all(np.diff(curve.coverage) > 0)


def test_an_empty_split_is_refused():
    with pytest.raises(ValueError, match="at least one input"):
        accuracy_coverage_curve(np.array([]), np.array([]), np.array([]))


def test_missing_annotations_route_among_the_experts_present():
    # Input 0's best expert (0) gave no annotation: expert 1 (score 0) takes its place and
    # the classifier (score 1) keeps it; input 4 has no annotation at all: always kept.
    expert_labels = EXPERT_LABELS.copy()
    expert_labels[0, 0] = -1
    expert_labels[4] = -1
    evaluation = evaluate_outputs(SCORES, CLASS_LOGITS.argmax(-1), LABELS, expert_labels,
                                  num_classes=3)
    np.testing.assert_array_equal(evaluation.counts["routed"], [1, 0, 4])
    np.testing.assert_array_equal(evaluation.counts["expert_present"], [3, 4])
    assert evaluation.curve.coverage[0] == pytest.approx(0.2)  # Input 4 is never deferred.
