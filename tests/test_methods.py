"""The surrogate methods: losses against hand computation, gradients, and their decisions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from l2d.config import TrainConfig
from l2d.methods import make_method
from l2d.methods.base import Problem
from l2d.methods.ova import ova_surrogate_loss
from l2d.methods.softmax import softmax_surrogate_loss

# Two inputs, C = 2 classes and K = 1 expert: outputs [2, 3] = (class 0, class 1, expert 0).
OUTPUTS = [[0.5, -1.0, 2.0], [1.5, 0.3, -0.7]]
LABELS = [1, 0]
# Expert annotations: right on both inputs, wrong on both, right on the first only.
EXPERT_CASES = {"right": [[1], [0]], "wrong": [[0], [1]], "mixed": [[1], [1]]}


def hand_softmax_loss(outputs, label, expert_labels, num_classes=2):
    log_z = math.log(sum(math.exp(o) for o in outputs))
    loss = -(outputs[label] - log_z)
    for k, t in enumerate(expert_labels):
        if t == label:
            loss -= outputs[num_classes + k] - log_z
    return loss


def hand_ova_loss(outputs, label, expert_labels, num_classes=2):
    def phi(s):
        return math.log(1 + math.exp(-s))

    loss = sum(phi(outputs[c]) if c == label else phi(-outputs[c]) for c in range(num_classes))
    for k, t in enumerate(expert_labels):
        g = outputs[num_classes + k]
        loss += phi(g) if t == label else phi(-g)
    return loss


@pytest.mark.parametrize("case", EXPERT_CASES)
@pytest.mark.parametrize("loss, hand", [(softmax_surrogate_loss, hand_softmax_loss),
                                        (ova_surrogate_loss, hand_ova_loss)])
def test_loss_matches_hand_computation(loss, hand, case):
    experts = EXPERT_CASES[case]
    got = loss(jnp.array(OUTPUTS), jnp.array(LABELS), jnp.array(experts), 2)
    expected = [hand(o, y, t) for o, y, t in zip(OUTPUTS, LABELS, experts)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_softmax_loss_for_one_expert_is_mozannar_sontag_cross_entropy():
    # L_CE = -log p_y - 1[t = y] log p_(C+1): with the expert right it is the sum of both terms.
    outputs = jnp.array([[0.2, 0.1, 0.4, -0.3]])
    log_p = jax.nn.log_softmax(outputs)
    got = softmax_surrogate_loss(outputs, jnp.array([2]), jnp.array([[2]]), 3)
    np.testing.assert_allclose(got, -(log_p[0, 2] + log_p[0, 3]), rtol=1e-6)


def test_ova_loss_stays_finite_for_large_outputs():
    outputs = jnp.array([[500.0, -500.0, 500.0]])
    got = ova_surrogate_loss(outputs, jnp.array([1]), jnp.array([[0]]), 2)
    np.testing.assert_allclose(got, [1500.0], rtol=1e-6)


def method_of(name: str, num_classes: int = 3, num_experts: int = 2):
    config = TrainConfig.from_dict(dict(method=name, model="cnn", width=4))
    return make_method(name, config.method_options, Problem(
        image_shape=(8, 8, 3), num_classes=num_classes, num_experts=num_experts))


@pytest.mark.parametrize("name", ["softmax", "ova"])
def test_scores_are_the_expert_outputs_then_the_best_class_output(name):
    method = method_of(name)
    outputs = jnp.array([[0.1, 2.0, -1.0, 1.5, 0.3], [0.0, 0.2, 0.1, 0.5, 0.9]])
    np.testing.assert_allclose(method.scores(outputs), [[1.5, 0.3, 2.0], [0.5, 0.9, 0.2]])
    # The argmax over all C + K outputs: class 1 keeps input 0, expert 1 takes input 1.
    np.testing.assert_array_equal(jnp.argmax(method.scores(outputs), -1), [2, 1])


@pytest.mark.parametrize("name", ["softmax", "ova"])
def test_a_gradient_reaches_every_parameter(name):
    method = method_of(name)
    model = method.create_model(nnx.Rngs(params=0))
    rng = np.random.default_rng(0)
    inputs = jnp.asarray(rng.normal(size=(4, 6, 6, 3)), jnp.float32)
    batch = {"label": jnp.array([0, 1, 2, 0]), "expert_labels": jnp.array(
        [[0, 1], [1, 1], [0, 2], [2, 0]])}
    grads, measurements = nnx.grad(method.loss, argnums=nnx.DiffState(0, nnx.Param),
                                   has_aux=True)(model, inputs, batch, jax.random.key(0))
    assert set(measurements) == set(method.measurements)
    leaves = jax.tree.leaves(grads)
    assert leaves and all(np.abs(np.asarray(g)).sum() > 0 for g in leaves)
    decision = method.decide(model, inputs)
    assert decision.scores.shape == (4, 3) and decision.class_logits.shape == (4, 3)
