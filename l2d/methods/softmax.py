"""The multi-expert softmax (cross-entropy) surrogate (Verma, Barrejon & Nalisnick, AISTATS 2023).

For K = 1 it is L_CE of Mozannar & Sontag (ICML 2020). p = softmax over all C + K outputs:

    loss = -log p_y - sum_k 1[t_k = y] log p_(C+k)

The classifier's class is learned as usual, and each expert's output is pushed up on the inputs
where that expert is right, so that at test time the argmax over all outputs defers exactly where
an expert is more likely right than the classifier.
"""

import jax
import jax.numpy as jnp

from l2d.methods.one_network import OneNetworkMethod, experts_right


def softmax_surrogate_loss(outputs: jax.Array, labels: jax.Array, expert_labels: jax.Array,
                           num_classes: int) -> jax.Array:
    """Per-sample loss ``[B]`` of outputs ``[B, C + K]``."""
    log_p = jax.nn.log_softmax(outputs.astype(jnp.float32), axis=-1)
    class_term = -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
    expert_terms = -jnp.sum(experts_right(expert_labels, labels) * log_p[:, num_classes:], -1)
    return class_term + expert_terms


class Softmax(OneNetworkMethod):
    name = "softmax"
    surrogate_loss = staticmethod(softmax_surrogate_loss)
