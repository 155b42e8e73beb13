"""The pieces of the benchmark protocol on small arrays: the curve's offsets and the operating
point, model selection, the stratified validation split, the optimisers and the CIFAR-K
expert."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import raises_one_line

from l2d.config import TrainingOptions, parse_operating_point
from l2d.data.experts import class_specialist
from l2d.data.manifest import SplitRecords
from l2d.data.validation import hold_out, validation_rows
from l2d.evaluation.accuracy_coverage import accuracy_coverage_curve
from l2d.evaluation.evaluate import evaluate_outputs
from l2d.evaluation.metrics import ACCURACY, COVERAGE, summarise
from l2d.evaluation.operating_point import operating_offset
from l2d.evaluation.selection import Selected, improves
from l2d.train_state import make_optimizer


def random_split_outputs(seed: int, n: int = 60, experts: int = 2, classes: int = 3):
    """Scores with ties (rounded), labels, expert labels with some missing, classifier classes."""
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=(n, experts + 1)), 1).astype(np.float32)
    labels = rng.integers(0, classes, n)
    expert_labels = np.where(rng.random((n, experts)) < 0.6, labels[:, None],
                             rng.integers(0, classes, (n, experts)))
    expert_labels[rng.random((n, experts)) < 0.1] = -1
    return scores, rng.integers(0, classes, n), labels, expert_labels


@pytest.mark.parametrize("seed", range(4))
def test_each_curve_point_is_routed_exactly_at_its_offset(seed):
    scores, predicted, labels, expert_labels = random_split_outputs(seed)
    evaluation = evaluate_outputs(scores, predicted, labels, expert_labels, num_classes=3)
    curve = evaluation.curve
    assert np.count_nonzero(curve.offset == 0) == 1
    for coverage, accuracy, offset in zip(curve.coverage, curve.accuracy, curve.offset):
        routed = evaluate_outputs(scores, predicted, labels, expert_labels, num_classes=3,
                                  offset=offset)
        metrics = summarise(routed.counts)
        assert metrics[COVERAGE] == pytest.approx(coverage, abs=1e-12)
        assert metrics[ACCURACY] == pytest.approx(accuracy, abs=1e-12)
        # The curve is the method's, whatever the offset routed.
        np.testing.assert_array_equal(routed.curve.offset, curve.offset)
    default = summarise(evaluation.counts)
    at_zero = np.flatnonzero(curve.offset == 0)[0]
    assert curve.coverage[at_zero] == pytest.approx(default[COVERAGE])


def test_operating_points_on_a_hand_made_curve():
    # Sorted margins inf, 2, 1, -1, -3: points keep 1..5 inputs.
    curve = accuracy_coverage_curve(np.array([2.0, 1.0, -1.0, -3.0, np.inf]),
                                    np.array([1, 0, 1, 1, 1], bool),
                                    np.array([0, 1, 0, 1, 0], bool))
    np.testing.assert_allclose(curve.coverage, [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(curve.accuracy, [0.6, 0.8, 0.6, 0.8, 0.8])
    # Midpoints between kept and deferred margins; one unit past either end; 0 at the default.
    np.testing.assert_allclose(curve.offset, [-3.0, -1.5, 0.0, 2.0, 4.0])
    assert operating_offset(curve, "default") == 0.0
    # Accuracy 0.8 at offsets -1.5, 2 and 4: the one nearest the default.
    assert operating_offset(curve, "best-val") == -1.5
    assert operating_offset(curve, "coverage=0.55") == 0.0
    assert operating_offset(curve, "coverage=1") == 4.0
    assert operating_offset(curve, "coverage=0") == -3.0


def test_best_val_is_the_default_when_the_default_is_best():
    curve = accuracy_coverage_curve(np.array([1.0, -1.0]), np.array([1, 0], bool),
                                    np.array([0, 1], bool))
    assert curve.accuracy.max() == curve.accuracy[curve.offset == 0][0] == 1.0
    assert operating_offset(curve, "best-val") == 0.0


@pytest.mark.parametrize("text", ["coverage=1.5", "coverage=", "coverage=x", "best", ""])
def test_bad_operating_points_are_refused(text):
    with pytest.raises(ValueError, match="expected default, best-val or coverage=X"):
        parse_operating_point(text)


def test_selection_keeps_the_first_of_equal_values_and_never_a_nan():
    best = Selected(epoch=2, value=0.5, offset=0.0)
    assert improves(0.6, best, "val/accuracy") and not improves(0.5, best, "val/accuracy")
    assert improves(0.4, best, "val/calibration/classifier/ece")
    assert not improves(0.6, best, "val/calibration/classifier/ece")
    assert not improves(float("nan"), None, "val/accuracy")
    assert improves(0.0, None, "val/accuracy") and not improves(1.0, None, "last")
    assert Selected.from_json(best.to_json()) == best and Selected.from_json(None) is None


def records(labels) -> SplitRecords:
    labels = np.asarray(labels, np.int32)
    return SplitRecords(groundtruth_path="gt.json", expert_paths=("a.json",),
                        files=tuple(f"/img/{i}.png" for i in range(labels.size)), labels=labels,
                        expert_labels=labels[:, None])


def test_the_validation_split_is_stratified_seeded_and_names_its_entries():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    rows = validation_rows(labels, 0.1, seed=3)
    assert np.bincount(labels[rows]).tolist() == [5, 3, 2]
    np.testing.assert_array_equal(rows, validation_rows(labels, 0.1, seed=3))
    assert not np.array_equal(rows, validation_rows(labels, 0.1, seed=4))
    train, val = hold_out(records(labels), 0.1, seed=3)
    assert (train.num_samples, val.num_samples) == (90, 10)
    assert set(train.files).isdisjoint(val.files)
    # Each row keeps its manifest entry, for error messages.
    assert [val.entry(i) for i in range(val.num_samples)] == rows.tolist()
    assert val.files[0] == f"/img/{rows[0]}.png" and val.labels[0] == labels[rows[0]]
    raises_one_line(lambda: hold_out(records(labels), 0.001, seed=0),
                    "--val-fraction=0.001: holds out no input of the 100 of gt.json")


def one_step(optimizer_name: str, *, schedule: str = "cosine", steps: int = 1):
    """The parameters after ``steps`` updates with zero gradients (only weight decay acts)."""
    training = TrainingOptions(optimizer=optimizer_name, lr=0.1, weight_decay=0.5,
                               lr_schedule=schedule)
    params = {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 2.0)}
    optimizer = make_optimizer(training, total_steps=4)
    state = optimizer.init(params)
    zero = {name: jnp.zeros_like(value) for name, value in params.items()}
    for _ in range(steps):
        updates, state = optimizer.update(zero, state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_weight_decay_means_what_it_should_for_each_optimizer():
    # sgd: the L2 gradient 0.5 * 2 = 1 times lr 0.1; biases are never decayed.
    np.testing.assert_allclose(one_step("sgd")["kernel"], 1.9)
    # adam, coupled: Adam's first step on the L2 gradient moves by lr (m / sqrt(v) = 1).
    np.testing.assert_allclose(one_step("adam")["kernel"], 1.9, rtol=1e-6)
    # adamw, decoupled: the kernel shrinks by lr * weight decay * value = 0.1.
    np.testing.assert_allclose(one_step("adamw")["kernel"], 2.0 - 0.1 * 0.5 * 2.0)
    for name in ("sgd", "adam", "adamw"):
        np.testing.assert_array_equal(one_step(name)["bias"], 2.0)


def test_the_constant_schedule_keeps_the_learning_rate():
    # adamw's decay is lr x 0.5 x kernel per step: the cosine's lr falls, the constant's not.
    constant = one_step("adamw", schedule="constant", steps=3)["kernel"]
    np.testing.assert_allclose(constant, 2.0 * 0.95 ** 3, rtol=1e-6)
    assert float(one_step("adamw", steps=3)["kernel"][0, 0]) > float(constant[0, 0])


def test_the_cifar_k_expert_is_uniformly_random_on_10_classes_outside_its_own():
    # The benchmark's expert answers uniformly over all 10 classes on classes >= k; l2d's
    # specialist with p_out = 0.1 is right with 0.1 and uniform over the 9 others: the same.
    n = 200_000
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n)
    answers = class_specialist(labels, tuple(range(5)), 1.0, 0.1, 10, rng.random((n, 2)))
    inside = labels < 5
    assert np.array_equal(answers[inside], labels[inside])
    # Per true class outside, the answer's distribution over the 10 classes: all within
    # 4 standard errors of 1/10.
    for c in range(5, 10):
        shares = np.bincount(answers[labels == c], minlength=10) / np.sum(labels == c)
        assert np.abs(shares - 0.1).max() < 4 * np.sqrt(0.1 * 0.9 / np.sum(labels == c))
