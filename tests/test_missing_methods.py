"""Missing annotations in every surrogate and baseline: each loss with an absent expert against a
hand computation in which that expert is simply not there, its gradients, the options routed
in training, and selective's tally."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from l2d.annotations import MISSING
from l2d.config import TrainConfig
from l2d.methods import make_method
from l2d.methods.asymmetric_softmax import asymmetric_softmax_loss
from l2d.methods.base import (
    Problem,
    available_options,
    cross_entropy,
    trainable,
    training_coverage,
)
from l2d.methods.confidence import experts_right_loss
from l2d.methods.ova import ova_surrogate_loss
from l2d.methods.realizable_surrogate import realizable_surrogate_loss
from l2d.methods.softmax import softmax_surrogate_loss
from l2d.methods.two_stage import option_costs, rejector_loss

C = 3
# Four inputs, C = 3 classes, K = 2 experts: outputs [4, 5] = (classes 0-2, expert 0, expert 1).
OUTPUTS = [[0.5, -1.0, 2.0, 1.2, -0.4], [1.5, 0.3, -0.7, 0.9, 2.1],
           [-0.2, 0.8, 0.1, -1.5, 0.6], [0.3, -0.5, 0.9, 0.4, 1.1]]
LABELS = [2, 0, 1, 1]
# Input 0: expert 0 absent, expert 1 wrong. Input 1: expert 0 wrong, expert 1 absent.
# Input 2: both absent. Input 3: both present, expert 0 wrong and expert 1 right.
EXPERT_LABELS = [[MISSING, 0], [1, MISSING], [MISSING, MISSING], [2, 1]]


def log_sum_exp(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def phi(s):
    """The logistic loss log(1 + e^-s)."""
    return log_sum_exp([0.0, -s])


# Each hand computation knows nothing of missing labels: it gets the class outputs, the outputs
# and labels of the experts present only, and the label.
def hand_softmax(classes, experts, annotations, y):
    log_z = log_sum_exp(classes + experts)
    return (log_z - classes[y]) + sum(log_z - g for g, t in zip(experts, annotations) if t == y)


def hand_ova(classes, experts, annotations, y):
    return (sum(phi(g) if c == y else phi(-g) for c, g in enumerate(classes))
            + sum(phi(g) if t == y else phi(-g) for g, t in zip(experts, annotations)))


def hand_rs(classes, experts, annotations, y):
    right = [classes[y]] + [g for g, t in zip(experts, annotations) if t == y]
    return log_sum_exp(classes + experts) - log_sum_exp(right)


def hand_asm(classes, experts, annotations, y):
    loss = log_sum_exp(classes) - classes[y]
    rest = log_sum_exp(sorted(classes)[:-1])
    for g, t in zip(experts, annotations):
        log_psi = g - log_sum_exp([rest, g])
        loss -= log_psi if t == y else math.log1p(-math.exp(log_psi))
    return loss


def hand_confidence(classes, experts, annotations, y):
    return (log_sum_exp(classes) - classes[y]
            + sum(phi(e) if t == y else phi(-e) for e, t in zip(experts, annotations)))


def hand_two_stage(classes, experts, annotations, y):
    """The class outputs are the classifier's logits; the rejector's outputs are the present
    experts' outputs then the last class output (the classifier's option)."""
    rejector = experts + [classes[-1]]
    costs = [float(t != y) for t in annotations] + [float(int(np.argmax(classes)) != y)]
    log_z = log_sum_exp(rejector)
    return -sum((sum(costs) - c) * (r - log_z) for c, r in zip(costs, rejector))


def two_stage_loss(outputs, labels, expert_labels, num_classes):
    # Rejector outputs: the two experts' outputs, then the last class output.
    rejector = jnp.concatenate([outputs[:, num_classes:], outputs[:, num_classes - 1:num_classes]],
                               axis=-1)
    costs = option_costs(jnp.argmax(outputs[:, :num_classes], -1), labels, expert_labels)
    return rejector_loss(rejector, costs, available_options(expert_labels))


LOSSES = {
    "softmax": (softmax_surrogate_loss, hand_softmax),
    "ova": (ova_surrogate_loss, hand_ova),
    "rs": (realizable_surrogate_loss, hand_rs),
    "asm": (asymmetric_softmax_loss, hand_asm),
    "confidence": (lambda o, y, t, c: cross_entropy(o[:, :c], y) + experts_right_loss(
        o[:, c:], y, t), hand_confidence),
    "two_stage": (two_stage_loss, hand_two_stage),
}


def hand_losses(hand, outputs, labels, expert_labels):
    losses = []
    for row, y, annotations in zip(outputs, labels, expert_labels):
        kept = [k for k, t in enumerate(annotations) if t != MISSING]
        losses.append(hand(list(row[:C]), [row[C + k] for k in kept],
                           [annotations[k] for k in kept], y))
    return losses


@pytest.mark.parametrize("name", LOSSES)
def test_an_absent_experts_terms_are_left_out_of_the_loss(name):
    loss, hand = LOSSES[name]
    expected = hand_losses(hand, OUTPUTS, LABELS, EXPERT_LABELS)
    got = loss(jnp.array(OUTPUTS), jnp.array(LABELS), jnp.array(EXPERT_LABELS), C)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    with jax.enable_x64(True):
        got64 = loss(jnp.array(OUTPUTS, jnp.float64), jnp.array(LABELS),
                     jnp.array(EXPERT_LABELS), C)
    np.testing.assert_allclose(got64, expected, rtol=1e-12)


@pytest.mark.parametrize("name", ["softmax", "ova", "rs", "asm", "confidence", "two_stage"])
def test_an_absent_experts_output_gets_no_gradient_and_the_others_stay_finite(name):
    loss, _ = LOSSES[name]
    grads = jax.grad(lambda o: jnp.sum(loss(o, jnp.array(LABELS), jnp.array(EXPERT_LABELS),
                                            C)))(jnp.array(OUTPUTS))
    assert np.all(np.isfinite(grads))
    expert_grads = np.asarray(grads[:, C:])
    absent = np.asarray(EXPERT_LABELS) == MISSING
    np.testing.assert_array_equal(expert_grads[absent], 0.0)
    assert np.all(expert_grads[~absent] != 0)


def method_of(name: str):
    widths = ({"model": "cnn", "width": 4} if name in ("softmax", "ova", "rs", "asm")
              else {"clf_width": 4, "dfr_model": "cnn", "dfr_width": 3} if name == "em"
              else {"clf_width": 4})
    networks = {"confidence": {"expert_model": "cnn", "expert_width": 3},
                "two_stage": {"rejector_model": "cnn", "rejector_width": 3}}.get(name, {})
    config = TrainConfig.from_dict(dict(method=name, allow_missing_annotations=True, **widths,
                                        **networks))
    return make_method(name, config.method_options, Problem(
        image_shape=(8, 8, 3), num_classes=C, num_experts=2))


@pytest.mark.parametrize("name", ["softmax", "ova", "rs", "asm", "confidence", "two_stage",
                                  "selective", "em"])
def test_every_method_trains_on_a_batch_with_absent_experts(name):
    method = method_of(name)
    model = method.create_model(nnx.Rngs(params=0))
    inputs = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 3)), jnp.float32)
    batch = {"label": jnp.array(LABELS), "expert_labels": jnp.array(EXPERT_LABELS)}
    grads, measurements = nnx.grad(method.loss, argnums=nnx.DiffState(0, trainable(method)),
                                   has_aux=True)(model, inputs, batch, jax.random.key(0))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert all(np.isfinite(v) for v in measurements.values())


def test_training_coverage_counts_only_the_options_present():
    # Softmax, outputs where the absent expert 0 of input 0 would win and the classifier wins
    # once it is left out; on input 1 the present expert 0 wins.
    method = method_of("softmax")
    outputs = jnp.array([[0.0, 0.0, 1.0, 5.0, -1.0], [0.0, 0.0, 1.0, 5.0, -1.0]])
    scores = method.scores(outputs)
    labels = jnp.array([[MISSING, 0], [0, MISSING]])
    assert float(training_coverage(scores)) == 0.0
    assert float(training_coverage(scores, available_options(labels))) == 0.5


def test_selective_counts_an_experts_accuracy_over_the_inputs_it_annotated():
    method = method_of("selective")
    model = method.create_model(nnx.Rngs(params=0))
    batch = {"label": jnp.array([0, 1, 2, 0]),
             "expert_labels": jnp.array([[0, MISSING], [MISSING, 1], [0, 2], [0, MISSING]])}
    nnx.grad(method.loss, argnums=nnx.DiffState(0, nnx.Param), has_aux=True)(
        model, jnp.zeros((4, 8, 8, 3)), batch, jax.random.key(0))
    np.testing.assert_array_equal(model.seen[...], [3, 2])
    np.testing.assert_array_equal(model.right[...], [2, 2])
