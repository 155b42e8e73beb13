"""The realizable surrogate (Mozannar, Lang, Wei, Sattigeri, Das & Sontag, "Who should predict?
Exact algorithms for learning to defer to humans", AISTATS 2023), in a multi-expert form.

One network with C + K outputs g, as the softmax surrogate. With r_k = 1[t_k = y]:

    loss = -alpha log[(e^(g_y) + sum_k r_k e^(g_(C+k))) / sum_j e^(g_j)]
           - (1 - alpha) log softmax(g_1..g_C)_y

The paper defines it for one expert (K = 1, natural logarithms here where its code uses base 2,
which only scales the loss); summing the right experts' mass in the first term is l2d's extension
to K experts: the loss is low when the probability mass of "an option that is right" is high,
whichever option it is, which is what makes it realizable-consistent. Decisions are the argmax
over all C + K outputs, as for the softmax surrogate.

An expert without an annotation for an input is left out of both sums of that input (its output
is -inf there), as in the softmax surrogate.
"""

import jax
import jax.numpy as jnp

from l2d.methods.base import at_least_float32
from l2d.methods.one_network import OneNetworkMethod, absent_left_out, experts_right


def realizable_surrogate_loss(outputs: jax.Array, labels: jax.Array, expert_labels: jax.Array,
                              num_classes: int, alpha: float = 1.0) -> jax.Array:
    """Per-sample loss ``[B]`` of outputs ``[B, C + K]``."""
    outputs = absent_left_out(at_least_float32(outputs), expert_labels)
    right = jnp.concatenate([jax.nn.one_hot(labels, num_classes, dtype=bool),
                             experts_right(expert_labels, labels) > 0], axis=-1)
    log_total = jax.nn.logsumexp(outputs, axis=-1)
    # The true class is always among the right options, so the masked logsumexp is finite.
    log_right = jax.nn.logsumexp(jnp.where(right, outputs, -jnp.inf), axis=-1)
    class_log_p = jax.nn.log_softmax(outputs[:, :num_classes], axis=-1)
    class_term = -jnp.take_along_axis(class_log_p, labels[:, None], axis=-1)[:, 0]
    return alpha * (log_total - log_right) + (1.0 - alpha) * class_term


class RealizableSurrogate(OneNetworkMethod):
    name = "rs"

    def surrogate_loss(self, outputs, labels, expert_labels, num_classes):
        return realizable_surrogate_loss(outputs, labels, expert_labels, num_classes,
                                         alpha=self.options.rs_alpha)
