"""The multi-expert softmax (cross-entropy) surrogate (Verma, Barrejon & Nalisnick, AISTATS 2023).

For K = 1 it is L_CE of Mozannar & Sontag (ICML 2020). p = softmax over all C + K outputs:

    loss = -log p_y - sum_k 1[t_k = y] log p_(C+k)

An expert without an annotation for an input leaves the softmax of that input (its output is
-inf there): the loss is that of the options present, and its output is pushed neither way.
The literature's code reads a missing label as a wrong one, which pushes its output down.

The classifier's class is learned as usual, and each expert's output is pushed up on the inputs
where that expert is right, so that at test time the argmax over all outputs defers exactly where
an expert is more likely right than the classifier.

Its estimate of P(expert k is right | x): at the loss's minimiser p_c is proportional to
P(y = c | x) and p_(C+k) to a_k = P(t_k = y | x), with total mass 1 + sum_k a_k, so
a_k = p_(C+k) / (1 - sum_j p_(C+j)) = exp(g_(C+k) - logsumexp(g_1..g_C)). For K = 1 it is
Mozannar & Sontag's p_(C+1) / (1 - p_(C+1)), which Verma & Nalisnick (ICML 2022) show is
unbounded: it can exceed 1, and calibration bins it clipped to [0, 1].
"""

import jax
import jax.numpy as jnp

from l2d.methods.base import at_least_float32
from l2d.methods.one_network import OneNetworkMethod, absent_left_out, experts_right


def softmax_surrogate_loss(outputs: jax.Array, labels: jax.Array, expert_labels: jax.Array,
                           num_classes: int) -> jax.Array:
    """Per-sample loss ``[B]`` of outputs ``[B, C + K]``."""
    log_p = jax.nn.log_softmax(absent_left_out(at_least_float32(outputs), expert_labels),
                               axis=-1)
    class_term = -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
    # An absent expert's log p is -inf and it is never right: where() keeps 0 x -inf out.
    right = experts_right(expert_labels, labels) > 0
    expert_terms = -jnp.sum(jnp.where(right, log_p[:, num_classes:], 0.0), axis=-1)
    return class_term + expert_terms


def softmax_expert_correct(outputs: jax.Array, num_classes: int) -> jax.Array:
    """``[B, K]``: a_k = exp(g_(C+k) - logsumexp(g_1..g_C)), in [0, inf)."""
    log_classes = jax.nn.logsumexp(outputs[:, :num_classes], axis=-1, keepdims=True)
    return jnp.exp(outputs[:, num_classes:] - log_classes)


class Softmax(OneNetworkMethod):
    name = "softmax"
    surrogate_loss = staticmethod(softmax_surrogate_loss)

    def expert_correct(self, outputs):
        return softmax_expert_correct(outputs, self.num_classes)
