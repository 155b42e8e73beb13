"""The EM algorithm of learning to defer, as pure ``jnp`` functions.

Notation (see README, "The method"): C classes, K experts, a latent z in {expert_1..expert_K,
classifier}; index K (the last) is the classifier. Shapes are given as ``[batch, ...]``.

- E-step: q(z) = p(z | x, y, t) proportional to p(z | x) p(y | z, x), computed in log space.
- M-step: the classifier minimises its cross-entropy weighted by q(classifier); the gating model
  minimises the cross-entropy between its softmax and q, used as soft labels.
"""

from typing import Literal

import jax
import jax.numpy as jnp

EStep = Literal["exact", "mc"]
ClassifierWeighting = Literal["posterior", "uniform"]


def expert_log_likelihood(
    expert_labels: jax.Array, labels: jax.Array, *, num_classes: int, smoothing: float
) -> jax.Array:
    """log p(y | z=k) for every expert k: ``[batch, K]``.

    With label smoothing eps an expert's annotation t_k is read as the distribution
    (1 - eps) onehot(t_k) + eps / C, so p(y | z=k) = 1 - eps + eps/C if t_k == y else eps/C.
    With eps = 0 a wrong expert gets -inf, which is exact: the posterior then gives it zero mass.
    """
    correct = expert_labels == labels[:, None]
    p_correct = 1.0 - smoothing + smoothing / num_classes
    p_wrong = smoothing / num_classes
    # jnp.log(0.) is -inf without a warning or NaN; logsumexp in `posterior` handles it.
    return jnp.where(correct, jnp.log(p_correct), jnp.log(p_wrong)).astype(jnp.float32)


def classifier_log_likelihood(clf_logits: jax.Array, labels: jax.Array) -> jax.Array:
    """log softmax(f(x))[y]: ``[batch]``."""
    log_probs = jax.nn.log_softmax(clf_logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def log_posterior(
    gate_logits: jax.Array, clf_logits: jax.Array, expert_log_lik: jax.Array, labels: jax.Array
) -> jax.Array:
    """Exact E-step: log q(z) over the K experts and the classifier, ``[batch, K + 1]``.

    Finite whenever the classifier's likelihood is finite, which log_softmax guarantees, so even a
    batch where every expert is wrong (all -inf with eps = 0) gives no NaN.
    """
    log_prior = jax.nn.log_softmax(gate_logits.astype(jnp.float32), axis=-1)
    log_lik = jnp.concatenate(
        [expert_log_lik, classifier_log_likelihood(clf_logits, labels)[:, None]], axis=-1
    )
    log_joint = log_prior + log_lik
    return log_joint - jax.nn.logsumexp(log_joint, axis=-1, keepdims=True)


def monte_carlo_posterior(key: jax.Array, log_q: jax.Array, num_samples: int) -> jax.Array:
    """Monte Carlo E-step: the empirical distribution of S samples z ~ q, ``[batch, K + 1]``."""
    samples = jax.random.categorical(key, log_q, axis=-1, shape=(num_samples, log_q.shape[0]))
    return jnp.mean(jax.nn.one_hot(samples, log_q.shape[-1], dtype=jnp.float32), axis=0)


def e_step(
    gate_logits: jax.Array,
    clf_logits: jax.Array,
    expert_labels: jax.Array,
    labels: jax.Array,
    *,
    num_classes: int,
    smoothing: float,
    method: EStep,
    mc_samples: int,
    key: jax.Array,
) -> jax.Array:
    """q(z) as a probability table ``[batch, K + 1]``, with no gradient to either network."""
    expert_log_lik = expert_log_likelihood(
        expert_labels, labels, num_classes=num_classes, smoothing=smoothing
    )
    log_q = log_posterior(gate_logits, clf_logits, expert_log_lik, labels)
    q = jnp.exp(log_q) if method == "exact" else monte_carlo_posterior(key, log_q, mc_samples)
    return jax.lax.stop_gradient(q)


def classifier_loss(
    clf_logits: jax.Array, labels: jax.Array, q: jax.Array, *, weighting: ClassifierWeighting
) -> jax.Array:
    """mean_i w_i CE(f(x_i), y_i), with w_i = q_i(classifier) or 1 (``weighting='uniform'``)."""
    cross_entropy = -classifier_log_likelihood(clf_logits, labels)
    weights = q[:, -1] if weighting == "posterior" else jnp.ones_like(cross_entropy)
    return jnp.mean(weights * cross_entropy)


def gating_loss(gate_logits: jax.Array, q: jax.Array) -> jax.Array:
    """mean_i CE(g(x_i), q_i) with q as soft labels."""
    log_prior = jax.nn.log_softmax(gate_logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.sum(q * log_prior, axis=-1))


def system_predictions(
    gate_logits: jax.Array, clf_logits: jax.Array, expert_labels: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Test-time decision: z* = argmax g(x) and the system's label, each ``[batch]``.

    The label is expert z*'s annotation, or the classifier's argmax when z* is the classifier.
    """
    chosen = jnp.argmax(gate_logits, axis=-1)
    num_experts = expert_labels.shape[-1]
    expert_choice = jnp.minimum(chosen, num_experts - 1)
    expert_label = jnp.take_along_axis(expert_labels, expert_choice[:, None], axis=-1)[:, 0]
    prediction = jnp.where(chosen == num_experts, jnp.argmax(clf_logits, axis=-1), expert_label)
    return chosen, prediction
