"""The one-vs-all surrogate (Verma & Nalisnick, ICML 2022; multi-expert form, AISTATS 2023).

C + K independent logistic outputs g, phi(s) = log(1 + e^-s) (the logistic loss):

    loss = phi(g_y) + sum_(y' != y) phi(-g_y')
           + sum_k [1[t_k = y] phi(g_(C+k)) + (1 - 1[t_k = y]) phi(-g_(C+k))]

Each class output is a one-vs-all classifier of its class; each expert output is a binary
classifier of "expert k is right on this input": its sigmoid is the method's estimate of
P(expert k is right | x), and the sigmoid of a class output that of P(y = c | x).

An expert without an annotation for an input has no binary term for that input: nothing says
whether it would have been right (the literature's code counts it as wrong).
"""

import jax
import jax.numpy as jnp

from l2d.methods.base import at_least_float32, present
from l2d.methods.one_network import OneNetworkMethod, experts_right


def logistic_loss(s: jax.Array) -> jax.Array:
    """phi(s) = log(1 + e^-s), computed without overflow for large |s|."""
    return jax.nn.softplus(-s)


def ova_surrogate_loss(outputs: jax.Array, labels: jax.Array, expert_labels: jax.Array,
                       num_classes: int) -> jax.Array:
    """Per-sample loss ``[B]`` of outputs ``[B, C + K]``."""
    outputs = at_least_float32(outputs)
    class_outputs, expert_outputs = outputs[:, :num_classes], outputs[:, num_classes:]
    is_label = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    # phi(g) for the true class, phi(-g) for every other class.
    class_terms = jnp.sum(logistic_loss(jnp.where(is_label > 0, class_outputs, -class_outputs)),
                          axis=-1)
    right = experts_right(expert_labels, labels)
    expert_terms = jnp.sum(jnp.where(present(expert_labels),
                                     right * logistic_loss(expert_outputs)
                                     + (1.0 - right) * logistic_loss(-expert_outputs), 0.0),
                           axis=-1)
    return class_terms + expert_terms


class OneVsAll(OneNetworkMethod):
    name = "ova"
    surrogate_loss = staticmethod(ova_surrogate_loss)

    def class_probabilities(self, outputs):
        return jax.nn.sigmoid(outputs[:, :self.num_classes])

    def expert_correct(self, outputs):
        return jax.nn.sigmoid(outputs[:, self.num_classes:])
