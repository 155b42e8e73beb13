"""What the surrogate-loss methods share: one network with C + K outputs, decided by argmax.

Outputs ``[B, C + K]``: the C class outputs first, then one deferral output per expert. At test
time the system takes the argmax over all C + K outputs: a class output winning means the
classifier answers with that class, expert k's output winning means deferring to expert k. As
method scores (``[B, K + 1]``, classifier last) that is the K deferral outputs followed by the
best class output. A subclass supplies only its per-sample loss.
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from l2d.methods.base import TRAIN_COVERAGE, TRAIN_COVERAGE_DESCRIPTION, training_coverage
from l2d.models import build_model

SURROGATE_LOSS = "loss/surrogate"


@dataclasses.dataclass(frozen=True)
class OneNetworkMethod:
    """Base of the surrogate methods; subclasses set ``name`` and ``surrogate_loss``."""

    name: ClassVar[str]
    measurements: ClassVar[dict[str, str]] = {
        SURROGATE_LOSS: "Surrogate loss (training)",
        TRAIN_COVERAGE: TRAIN_COVERAGE_DESCRIPTION,
    }

    in_channels: int
    num_classes: int
    num_experts: int
    model: str
    width: int | None
    dtype: jnp.dtype = jnp.float32

    @classmethod
    def from_config(cls, config, *, in_channels: int, num_classes: int, num_experts: int):
        return cls(in_channels=in_channels, num_classes=num_classes, num_experts=num_experts,
                   model=config.model, width=config.width, dtype=jnp.dtype(config.compute_dtype))

    @staticmethod
    def surrogate_loss(outputs: jax.Array, labels: jax.Array, expert_labels: jax.Array,
                       num_classes: int) -> jax.Array:
        """Per-sample loss ``[B]`` of outputs ``[B, C + K]``; defined by each subclass."""
        raise NotImplementedError

    def create_model(self, rngs: nnx.Rngs) -> nnx.Module:
        return build_model(self.model, in_channels=self.in_channels, dtype=self.dtype,
                           num_outputs=self.num_classes + self.num_experts, width=self.width,
                           rngs=rngs)

    def loss(self, model: nnx.Module, inputs, batch, key):
        outputs = model(inputs)
        loss = jnp.mean(self.surrogate_loss(outputs, batch["label"], batch["expert_labels"],
                                            self.num_classes))
        return loss, {SURROGATE_LOSS: loss,
                      TRAIN_COVERAGE: training_coverage(self.scores(outputs))}

    def decide(self, model: nnx.Module, inputs):
        outputs = model(inputs)
        return self.scores(outputs), outputs[:, :self.num_classes]

    def scores(self, outputs: jax.Array) -> jax.Array:
        """``[B, K + 1]``: the deferral outputs, then the best class output."""
        class_outputs = outputs[:, :self.num_classes]
        return jnp.concatenate(
            [outputs[:, self.num_classes:], jnp.max(class_outputs, axis=-1, keepdims=True)],
            axis=-1)


def experts_right(expert_labels: jax.Array, labels: jax.Array) -> jax.Array:
    """1[t_k = y] as float32 ``[B, K]``."""
    return (expert_labels == labels[:, None]).astype(jnp.float32)
