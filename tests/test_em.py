"""E-step and M-step functions against hand computation on tiny arrays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2d.evaluation.evaluate import available_options, route, system_predictions
from l2d.methods import em

# Two inputs, three classes, two experts. Input 0: expert 0 right, expert 1 wrong.
# Input 1: both experts wrong.
LABELS = jnp.array([2, 0])
EXPERT_LABELS = jnp.array([[2, 1], [1, 2]])
GATE_LOGITS = jnp.array([[0.5, -1.0, 0.2], [1.0, 2.0, -0.5]])
CLF_LOGITS = jnp.array([[0.1, 0.3, 1.2], [-0.3, 0.8, 0.0]])


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def hand_posterior(smoothing: float, num_classes: int = 3) -> np.ndarray:
    prior = softmax(np.asarray(GATE_LOGITS, np.float64))
    clf = softmax(np.asarray(CLF_LOGITS, np.float64))
    right = 1 - smoothing + smoothing / num_classes
    wrong = smoothing / num_classes
    lik = np.empty((2, 3))
    for i, (label, experts) in enumerate(zip(np.asarray(LABELS), np.asarray(EXPERT_LABELS))):
        lik[i, :2] = [right if t == label else wrong for t in experts]
        lik[i, 2] = clf[i, label]
    joint = prior * lik
    return joint / joint.sum(-1, keepdims=True)


def posterior(smoothing, method="exact", mc_samples=1, seed=0):
    return em.e_step(GATE_LOGITS, CLF_LOGITS, EXPERT_LABELS, LABELS, num_classes=3,
                     smoothing=smoothing, method=method, mc_samples=mc_samples,
                     key=jax.random.key(seed))


def test_expert_log_likelihood_without_smoothing_is_zero_or_minus_infinity():
    log_lik = em.expert_log_likelihood(EXPERT_LABELS, LABELS, num_classes=3, smoothing=0.0)
    np.testing.assert_array_equal(log_lik, [[0.0, -np.inf], [-np.inf, -np.inf]])


def test_expert_log_likelihood_with_smoothing():
    log_lik = em.expert_log_likelihood(EXPERT_LABELS, LABELS, num_classes=10, smoothing=0.1)
    np.testing.assert_allclose(np.exp(log_lik), [[0.91, 0.01], [0.01, 0.01]], rtol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_exact_posterior_matches_hand_computation(smoothing):
    q = posterior(smoothing)
    np.testing.assert_allclose(q, hand_posterior(smoothing), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-6)


def test_all_experts_wrong_gives_everything_to_the_classifier_without_nan():
    q = posterior(0.0)
    np.testing.assert_array_equal(q[1], [0.0, 0.0, 1.0])
    assert np.isfinite(np.asarray(q)).all()

    def losses(gate_logits, clf_logits):
        q = em.e_step(gate_logits, clf_logits, EXPERT_LABELS, LABELS, num_classes=3,
                      smoothing=0.0, method="exact", mc_samples=1, key=jax.random.key(0))
        return (em.gating_loss(gate_logits, q)
                + em.classifier_loss(clf_logits, LABELS, q, weighting="posterior"))

    value, grads = jax.value_and_grad(losses, argnums=(0, 1))(GATE_LOGITS, CLF_LOGITS)
    assert np.isfinite(float(value))
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_e_step_blocks_gradients():
    grad = jax.grad(lambda g: posterior_sum(g))(GATE_LOGITS)
    np.testing.assert_array_equal(grad, np.zeros_like(GATE_LOGITS))


def posterior_sum(gate_logits):
    q = em.e_step(gate_logits, CLF_LOGITS, EXPERT_LABELS, LABELS, num_classes=3, smoothing=0.2,
                  method="exact", mc_samples=1, key=jax.random.key(0))
    return jnp.sum(q * jnp.arange(3.0))


def test_monte_carlo_posterior_approaches_exact_as_samples_grow():
    exact = hand_posterior(0.2)
    errors = []
    for samples in (4, 64, 4096):
        q = posterior(0.2, method="mc", mc_samples=samples, seed=1)
        np.testing.assert_allclose(np.asarray(q).sum(-1), 1.0, rtol=1e-6)
        # Each entry is a multiple of 1/S: an empirical distribution of S draws.
        np.testing.assert_allclose(np.asarray(q) * samples, np.round(np.asarray(q) * samples),
                                   atol=1e-3)
        errors.append(np.abs(np.asarray(q) - exact).max())
    assert errors[-1] < 0.03
    assert errors[-1] < errors[0]


def test_classifier_loss_weights_by_posterior_or_uniformly():
    q = jnp.array([[0.2, 0.3, 0.5], [0.0, 0.0, 1.0]])
    clf = softmax(np.asarray(CLF_LOGITS, np.float64))
    cross_entropy = -np.log(clf[[0, 1], np.asarray(LABELS)])
    weighted = em.classifier_loss(CLF_LOGITS, LABELS, q, weighting="posterior")
    uniform = em.classifier_loss(CLF_LOGITS, LABELS, q, weighting="uniform")
    np.testing.assert_allclose(weighted, np.mean([0.5, 1.0] * cross_entropy), rtol=1e-5)
    np.testing.assert_allclose(uniform, np.mean(cross_entropy), rtol=1e-5)


def test_gating_loss_is_soft_label_cross_entropy():
    q = jnp.array([[0.2, 0.3, 0.5], [0.0, 1.0, 0.0]])
    log_prior = np.log(softmax(np.asarray(GATE_LOGITS, np.float64)))
    expected = -np.mean((np.asarray(q) * log_prior).sum(-1))
    np.testing.assert_allclose(em.gating_loss(GATE_LOGITS, q), expected, rtol=1e-5)


def test_system_predictions_follow_the_gate():
    gate_logits = jnp.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]])
    expert_labels = jnp.array([[4, 5], [4, 5], [4, 5]])
    clf_logits = jax.nn.one_hot(jnp.array([1, 1, 7]), 8)
    expert_labels = np.asarray(expert_labels)
    chosen = route(np.asarray(gate_logits), available_options(expert_labels))
    prediction = system_predictions(chosen, np.asarray(clf_logits).argmax(-1), expert_labels)
    np.testing.assert_array_equal(chosen, [0, 1, 2])
    np.testing.assert_array_equal(prediction, [4, 5, 7])
