"""The asymmetric softmax (Cao, Mozannar, Feng, Wei & An, "In defense of softmax
parametrization for calibrated and consistent learning to defer", NeurIPS 2023), per expert.

One network with C + K outputs g. The classes' probabilities are the softmax of g_1..g_C alone,
psi_y = softmax(g_1..g_C)_y; expert k's probability of being right is

    psi_k = e^(g_(C+k)) / (sum_(c<=C) e^(g_c) + e^(g_(C+k)) - max_(c<=C) e^(g_c))

which lies in (0, 1), and the loss is

    loss = -log psi_y - sum_k [r_k log psi_k + (1 - r_k) log(1 - psi_k)],   r_k = 1[t_k = y].

The paper defines it for one expert; l2d's per-expert form gives each expert its own psi_k,
all sharing the class outputs, and one binary term each. The system defers to the expert with
the highest psi_k when it beats max_y psi_y. An expert without an annotation for an input has
no binary term for that input.

In log space (so that outputs of +-80, and more, stay finite): with m = max_c g_c, the
denominator's sum_c e^(g_c) - e^m is e^L with L the logsumexp of the class outputs other than
the (first) largest, so log psi_k = -softplus(L - g_(C+k)), log(1 - psi_k) = -softplus(g_(C+k) - L)
and log max_y psi_y = -softplus(L - m). Written so, the scores stay exact near 0 (where
psi is close to 1) and their comparison is exactly that of g_(C+k) with m.
"""

import jax
import jax.numpy as jnp

from l2d.methods.base import at_least_float32, present
from l2d.methods.one_network import OneNetworkMethod, experts_right


def log_rest(class_outputs: jax.Array) -> jax.Array:
    """``[B, 1]``: L = log(sum_c e^(g_c) - max_c e^(g_c)), the logsumexp without the largest."""
    largest = jax.nn.one_hot(jnp.argmax(class_outputs, axis=-1), class_outputs.shape[-1],
                             dtype=bool)
    return jax.nn.logsumexp(jnp.where(largest, -jnp.inf, class_outputs), axis=-1,
                            keepdims=True)


def log_psi(outputs: jax.Array, num_classes: int) -> tuple[jax.Array, jax.Array]:
    """(log psi_k, log(1 - psi_k)), each ``[B, K]``."""
    outputs = at_least_float32(outputs)
    rest = log_rest(outputs[:, :num_classes])
    experts = outputs[:, num_classes:]
    return -jax.nn.softplus(rest - experts), -jax.nn.softplus(experts - rest)


def asymmetric_softmax_loss(outputs: jax.Array, labels: jax.Array, expert_labels: jax.Array,
                            num_classes: int) -> jax.Array:
    """Per-sample loss ``[B]`` of outputs ``[B, C + K]``."""
    outputs = at_least_float32(outputs)
    class_log_p = jax.nn.log_softmax(outputs[:, :num_classes], axis=-1)
    class_term = -jnp.take_along_axis(class_log_p, labels[:, None], axis=-1)[:, 0]
    log_right, log_wrong = log_psi(outputs, num_classes)
    right = experts_right(expert_labels, labels)
    expert_terms = jnp.where(present(expert_labels),
                             right * log_right + (1.0 - right) * log_wrong, 0.0)
    return class_term - jnp.sum(expert_terms, axis=-1)


class AsymmetricSoftmax(OneNetworkMethod):
    name = "asm"
    surrogate_loss = staticmethod(asymmetric_softmax_loss)

    def scores(self, outputs):
        """``[B, K + 1]``: log psi_k, then log max_y psi_y."""
        class_outputs = at_least_float32(outputs[:, :self.num_classes])
        top = -jax.nn.softplus(log_rest(class_outputs)
                               - jnp.max(class_outputs, axis=-1, keepdims=True))
        return jnp.concatenate([log_psi(outputs, self.num_classes)[0], top], axis=-1)

    def expert_correct(self, outputs):
        return jnp.exp(log_psi(outputs, self.num_classes)[0])
