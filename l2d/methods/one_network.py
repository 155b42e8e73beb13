"""What the surrogate-loss methods share: one network with C + K outputs, decided by argmax.

Outputs ``[B, C + K]``: the C class outputs first, then one deferral output per expert. At test
time the system takes the argmax over all C + K outputs: a class output winning means the
classifier answers with that class, expert k's output winning means deferring to expert k. As
method scores (``[B, K + 1]``, classifier last) that is the K deferral outputs followed by the
best class output. A subclass supplies its per-sample loss and, where its outputs mean
something else, its scores and probability estimates.

An expert without an annotation for an input is no option for it: each loss leaves that expert's
terms out (its output leaves the softmax of softmax and rs; its binary term goes in ova and asm),
and routing chooses among the options present, as at test time.
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from l2d.methods.base import Decision, Problem, available_options, present, training_coverage
from l2d.methods.options import (
    SURROGATE_LOSS,
    SURROGATE_MEASUREMENTS,
    TRAIN_COVERAGE,
    OneNetworkOptions,
)
from l2d.models import build_model


@dataclasses.dataclass(frozen=True)
class OneNetworkMethod:
    """Base of the surrogate methods; subclasses set ``name`` and ``surrogate_loss``."""

    name: ClassVar[str]
    measurements: ClassVar[dict[str, str]] = SURROGATE_MEASUREMENTS

    options: OneNetworkOptions
    problem: Problem

    @property
    def num_classes(self) -> int:
        return self.problem.num_classes

    @staticmethod
    def surrogate_loss(outputs: jax.Array, labels: jax.Array, expert_labels: jax.Array,
                       num_classes: int) -> jax.Array:
        """Per-sample loss ``[B]`` of outputs ``[B, C + K]``; defined by each subclass."""
        raise NotImplementedError

    def create_model(self, rngs: nnx.Rngs) -> nnx.Module:
        problem = self.problem
        return build_model(self.options.model, image_shape=problem.image_shape,
                           dtype=problem.dtype, num_outputs=problem.num_classes
                           + problem.num_experts, width=self.options.width, rngs=rngs)

    def loss(self, model: nnx.Module, inputs, batch, key):
        outputs = model(inputs)
        loss = jnp.mean(self.surrogate_loss(outputs, batch["label"], batch["expert_labels"],
                                            self.num_classes))
        return loss, {SURROGATE_LOSS: loss, TRAIN_COVERAGE: training_coverage(
            self.scores(outputs), available_options(batch["expert_labels"]))}

    def decide(self, model: nnx.Module, inputs) -> Decision:
        outputs = model(inputs).astype(jnp.float32)
        class_outputs = outputs[:, :self.num_classes]
        return Decision(self.scores(outputs), class_outputs,
                        self.class_probabilities(outputs), self.expert_correct(outputs))

    def class_probabilities(self, outputs: jax.Array) -> jax.Array:
        """``[B, C]``: the softmax of the class outputs alone."""
        return jax.nn.softmax(outputs[:, :self.num_classes], axis=-1)

    def expert_correct(self, outputs: jax.Array) -> jax.Array | None:
        """``[B, K]``: the estimate of P(expert k is right | x) the loss implies, if any."""
        return None

    def scores(self, outputs: jax.Array) -> jax.Array:
        """``[B, K + 1]``: the deferral outputs, then the best class output."""
        class_outputs = outputs[:, :self.num_classes]
        return jnp.concatenate(
            [outputs[:, self.num_classes:], jnp.max(class_outputs, axis=-1, keepdims=True)],
            axis=-1)


def experts_right(expert_labels: jax.Array, labels: jax.Array) -> jax.Array:
    """1[t_k = y] as float32 ``[B, K]`` (0 where t_k is missing)."""
    return (expert_labels == labels[:, None]).astype(jnp.float32)


def absent_left_out(outputs: jax.Array, expert_labels: jax.Array) -> jax.Array:
    """Outputs ``[B, C + K]`` with each absent expert's output at -inf: no mass in a softmax
    over all outputs, so the loss neither rewards nor punishes deferring to it."""
    num_classes = outputs.shape[-1] - expert_labels.shape[-1]
    kept = jnp.concatenate([jnp.ones((outputs.shape[0], num_classes), bool),
                            present(expert_labels)], axis=-1)
    return jnp.where(kept, outputs, -jnp.inf)
