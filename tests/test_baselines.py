"""The baselines' losses and decisions (rs, asm, confidence, two_stage, selective) against
hand computations, in float32 and float64 and at extreme logits, and their gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from l2d.config import TrainConfig
from l2d.methods import make_method
from l2d.methods.asymmetric_softmax import asymmetric_softmax_loss, log_psi
from l2d.methods.base import Problem, cross_entropy, trainable
from l2d.methods.confidence import confidence_scores, experts_right_loss
from l2d.methods.realizable_surrogate import realizable_surrogate_loss
from l2d.methods.selective import selective_scores
from l2d.methods.two_stage import option_costs, rejector_loss

# Two inputs, C = 2 classes and K = 1 expert: outputs [2, 3] = (class 0, class 1, expert 0).
OUTPUTS = [[0.5, -1.0, 2.0], [1.5, 0.3, -0.7]]
LABELS = [1, 0]
# Expert annotations: right on both inputs, wrong on both, right on the first only.
EXPERT_CASES = {"right": [[1], [0]], "wrong": [[0], [1]], "mixed": [[1], [1]]}
# Logits of +-80 (e^80 overflows float32): every loss must stay finite and exact.
EXTREME = [[80.0, -80.0, 80.0], [-80.0, 80.0, -80.0]]


def log_sum_exp(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def hand_rs(outputs, label, experts, alpha, num_classes=2):
    right = [outputs[label]] + [outputs[num_classes + k] for k, t in enumerate(experts)
                                if t == label]
    deferral = log_sum_exp(outputs) - log_sum_exp(right)
    classes = log_sum_exp(outputs[:num_classes]) - outputs[label]
    return alpha * deferral + (1 - alpha) * classes


def hand_asm(outputs, label, experts, num_classes=2):
    classes = outputs[:num_classes]
    loss = log_sum_exp(classes) - outputs[label]
    # sum_c e^g_c - max_c e^g_c, in log space: the logsumexp of the classes but the largest.
    rest = log_sum_exp(sorted(classes)[:-1])
    for k, t in enumerate(experts):
        g = outputs[num_classes + k]
        denominator = log_sum_exp([rest, g])
        loss -= (g - denominator) if t == label else (rest - denominator)
    return loss


def hand_confidence(outputs, label, experts, num_classes=2):
    """Cross-entropy of the class logits plus the logistic loss of each expert output."""
    loss = log_sum_exp(outputs[:num_classes]) - outputs[label]
    for k, t in enumerate(experts):
        e = outputs[num_classes + k]
        loss += log_sum_exp([0.0, -e]) if t == label else log_sum_exp([0.0, e])
    return loss


def hand_two_stage(rejector, label, experts, class_prediction):
    costs = [float(t != label) for t in experts] + [float(class_prediction != label)]
    log_z = log_sum_exp(rejector)
    return -sum((sum(costs) - c) * (r - log_z) for c, r in zip(costs, rejector))


def split_outputs(outputs):
    """(class logits [B, 2], expert outputs [B, 1]) of OUTPUTS-shaped arrays."""
    return outputs[:, :2], outputs[:, 2:]


LOSSES = {
    "rs": (lambda o, y, t: realizable_surrogate_loss(o, y, t, 2),
           lambda o, y, t: hand_rs(o, y, t, alpha=1.0)),
    "rs alpha 0.3": (lambda o, y, t: realizable_surrogate_loss(o, y, t, 2, alpha=0.3),
                     lambda o, y, t: hand_rs(o, y, t, alpha=0.3)),
    "asm": (lambda o, y, t: asymmetric_softmax_loss(o, y, t, 2), hand_asm),
    "confidence": (lambda o, y, t: cross_entropy(o[:, :2], y)
                   + experts_right_loss(o[:, 2:], y, t), hand_confidence),
    # The rejector's K + 1 = 2 outputs are the last two outputs; the classifier predicts the
    # argmax of the first two.
    "two_stage": (lambda o, y, t: rejector_loss(o[:, 1:], option_costs(
                      jnp.argmax(o[:, :2], -1), y, t)),
                  lambda o, y, t: hand_two_stage(o[1:], y, t, int(np.argmax(o[:2])))),
    "selective": (lambda o, y, t: cross_entropy(o[:, :2], y),
                  lambda o, y, t: log_sum_exp(o[:2]) - o[y]),
}


@pytest.mark.parametrize("case", EXPERT_CASES)
@pytest.mark.parametrize("name", LOSSES)
def test_loss_matches_hand_computation_in_float32(name, case):
    loss, hand = LOSSES[name]
    experts = EXPERT_CASES[case]
    got = loss(jnp.array(OUTPUTS), jnp.array(LABELS), jnp.array(experts))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, [hand(o, y, t) for o, y, t in
                                     zip(OUTPUTS, LABELS, experts)], rtol=1e-6)


@pytest.mark.parametrize("outputs", [OUTPUTS, EXTREME], ids=["moderate", "extreme"])
@pytest.mark.parametrize("name", LOSSES)
def test_loss_matches_hand_computation_in_float64_and_at_extreme_logits(name, outputs):
    loss, hand = LOSSES[name]
    for experts in EXPERT_CASES.values():
        expected = [hand(o, y, t) for o, y, t in zip(outputs, LABELS, experts)]
        with jax.enable_x64(True):
            got64 = loss(jnp.array(outputs, jnp.float64), jnp.array(LABELS), jnp.array(experts))
            assert got64.dtype == jnp.float64
        np.testing.assert_allclose(got64, expected, rtol=1e-12, atol=1e-12)
        got32 = loss(jnp.array(outputs, jnp.float32), jnp.array(LABELS), jnp.array(experts))
        assert np.all(np.isfinite(got32))
        np.testing.assert_allclose(got32, expected, rtol=1e-6, atol=1e-5)


def test_asm_probabilities_are_in_zero_one_and_finite_at_extreme_logits():
    outputs = jnp.array([[80.0, -80.0, 80.0], [80.0, 80.0, -80.0], [-80.0, 80.0, 80.0]])
    log_right, log_wrong = log_psi(outputs, 2)
    psi = np.exp(np.asarray(log_right))
    assert np.all(np.isfinite(log_right)) and np.all(np.isfinite(log_wrong))
    assert np.all((psi >= 0) & (psi <= 1))
    # psi + (1 - psi) = 1 in log space; a tie between the two classes leaves e^80 as the rest.
    np.testing.assert_allclose(np.logaddexp(log_right, log_wrong), 0.0, atol=1e-6)
    np.testing.assert_allclose(psi[:, 0], [1.0, 0.0, 1.0], atol=1e-6)
    # The gradient at extreme logits is finite too.
    grads = jax.grad(lambda o: asymmetric_softmax_loss(o, jnp.array([0, 1, 1]),
                                                       jnp.array([[0], [1], [0]]), 2).sum())(
        outputs)
    assert np.all(np.isfinite(grads))


def test_rs_for_one_expert_right_is_the_log_of_the_right_mass():
    # With the expert right and alpha = 1: -log(p_y + p_defer), the realizable surrogate of
    # Mozannar et al. (2023) in natural logarithms.
    outputs = jnp.array([[0.2, 0.1, 0.4, -0.3]])
    p = jax.nn.softmax(outputs)[0]
    got = realizable_surrogate_loss(outputs, jnp.array([2]), jnp.array([[2]]), 3)
    np.testing.assert_allclose(got, [-math.log(p[2] + p[3])], rtol=1e-6)


def test_decisions_compare_the_estimated_probabilities():
    clf_logits = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.4, 0.3, 0.3]]))
    expert_outputs = jnp.array([[0.0, -1.0], [2.0, 0.0]])  # sigmoid: (0.5, 0.27), (0.88, 0.5)
    scores = np.exp(confidence_scores(clf_logits, expert_outputs))
    np.testing.assert_allclose(scores, [[0.5, 1 / (1 + math.e), 0.7],
                                        [1 / (1 + math.exp(-2)), 0.5, 0.4]], rtol=1e-6)
    # Input 0 stays with the classifier (0.7 > 0.5); input 1 goes to expert 0 (0.88 > 0.4).
    np.testing.assert_array_equal(np.argmax(scores, -1), [2, 0])
    selective = np.exp(selective_scores(clf_logits, jnp.array([0.6, 0.45])))
    np.testing.assert_allclose(selective, [[0.6, 0.45, 0.7], [0.6, 0.45, 0.4]], rtol=1e-6)
    np.testing.assert_array_equal(np.argmax(selective, -1), [2, 0])


def test_asm_defers_when_the_best_psi_beats_the_classifier():
    method = method_of("asm", num_classes=2, num_experts=2)
    outputs = jnp.array([[2.0, 0.0, 3.0, -1.0], [2.0, 0.0, -3.0, -1.0]])
    log_right, _ = log_psi(outputs, 2)
    top_class = jax.nn.softmax(outputs[:, :2]).max(-1)
    scores = method.scores(outputs)
    np.testing.assert_allclose(np.exp(scores), np.c_[np.exp(log_right), top_class], rtol=1e-6)
    # psi_0 = e^3 / (1 + e^3) > 0.88 on input 0; on input 1 no psi beats the classifier.
    np.testing.assert_array_equal(np.argmax(scores, -1), [0, 2])


def method_of(name: str, num_classes: int = 3, num_experts: int = 2, **options):
    widths = {"model": "cnn", "width": 4} if name in ("rs", "asm") else {"clf_width": 4}
    networks = {"confidence": {"expert_model": "cnn", "expert_width": 3},
                "two_stage": {"rejector_model": "cnn", "rejector_width": 3}}.get(name, {})
    config = TrainConfig.from_dict(dict(method=name, **widths, **networks, **options))
    return make_method(name, config.method_options, Problem(
        image_shape=(8, 8, 3), num_classes=num_classes, num_experts=num_experts))


@pytest.mark.parametrize("name", ["rs", "asm", "confidence", "two_stage", "selective"])
def test_a_gradient_reaches_every_parameter(name):
    method = method_of(name)
    model = method.create_model(nnx.Rngs(params=0))
    rng = np.random.default_rng(0)
    inputs = jnp.asarray(rng.normal(size=(4, 6, 6, 3)), jnp.float32)
    batch = {"label": jnp.array([0, 1, 2, 0]), "expert_labels": jnp.array(
        [[0, 1], [1, 1], [0, 2], [2, 0]])}
    grads, measurements = nnx.grad(method.loss, argnums=nnx.DiffState(0, trainable(method)),
                                   has_aux=True)(model, inputs, batch, jax.random.key(0))
    assert set(measurements) == set(method.measurements)
    leaves = jax.tree.leaves(grads)
    assert len(leaves) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert all(np.abs(np.asarray(g)).sum() > 0 for g in leaves)
    model.eval()
    decision = method.decide(model, inputs)
    assert decision.scores.shape == (4, 3) and decision.class_logits.shape == (4, 3)
    np.testing.assert_allclose(decision.class_probabilities.sum(-1), 1.0, rtol=1e-6)
    if decision.expert_correct is not None:
        assert decision.expert_correct.shape == (4, 2)
        assert np.all((decision.expert_correct >= 0) & (decision.expert_correct <= 1))


def test_selective_counts_each_experts_training_accuracy_in_its_state():
    method = method_of("selective")
    model = method.create_model(nnx.Rngs(params=0))
    inputs = jnp.zeros((4, 6, 6, 3))
    batch = {"label": jnp.array([0, 1, 2, 0]),
             "expert_labels": jnp.array([[0, 1], [1, 1], [0, 2], [2, 0]])}
    for _ in range(2):
        nnx.grad(method.loss, argnums=nnx.DiffState(0, nnx.Param), has_aux=True)(
            model, inputs, batch, jax.random.key(0))
    np.testing.assert_array_equal(model.seen[...], [8, 8])
    np.testing.assert_array_equal(model.right[...], [4, 6])
    np.testing.assert_allclose(model.expert_accuracy(), [0.5, 0.75])
