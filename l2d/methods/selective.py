"""Selective prediction: the baseline every deferral paper reports.

A classifier is trained by cross-entropy alone; the experts play no part in its training. It
keeps the inputs where its top softmax probability is highest and defers the others to the
expert with the best training accuracy. That accuracy is counted during training, from the
annotations of the training batches, into the model's state (``ExpertTally``), so that it is
checkpointed, resumed and served with the classifier. An expert's accuracy counts only the
inputs it annotated.

Scores: log(training accuracy of expert k) for every expert (the best one available wins), then
log max_c softmax(h)_c. The default decision defers when the classifier is less likely right than
that expert is on average; the accuracy-coverage curve, which sweeps the margin, is the classic
selective-classification curve: the line a deferral method must beat.
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from l2d.methods.base import (
    Decision,
    Problem,
    available_options,
    cross_entropy,
    present,
    top_log_probability,
    training_coverage,
)
from l2d.methods.options import (
    CLF_LOSS,
    SELECTIVE_MEASUREMENTS,
    TRAIN_COVERAGE,
    ClassifierOptions,
)
from l2d.models import build_model

# An expert never right in training scores log of this, not -inf (scores stay finite numbers).
SMALLEST_ACCURACY = 1e-6


class ExpertTally(nnx.Variable):
    """Counts kept with the model, not trained: not an ``nnx.Param``."""


class SelectiveNetworks(nnx.Module):
    def __init__(self, classifier: nnx.Module, num_experts: int):
        self.classifier = classifier
        # Per expert: training annotations that were right, and training annotations seen
        # (present ones: a missing annotation is neither).
        # int32: float32 counts stop being exact past 2^24 annotations.
        self.right = ExpertTally(jnp.zeros(num_experts, jnp.int32))
        self.seen = ExpertTally(jnp.zeros(num_experts, jnp.int32))

    def expert_accuracy(self) -> jax.Array:
        """``[K]``: each expert's accuracy on the training batches so far (0 before any)."""
        return self.right[...] / jnp.maximum(self.seen[...], 1).astype(jnp.float32)


def selective_scores(clf_logits: jax.Array, expert_accuracy: jax.Array) -> jax.Array:
    """``[B, K + 1]``: log training accuracy per expert, then log max_c softmax(h)_c."""
    experts = jnp.log(jnp.maximum(expert_accuracy, SMALLEST_ACCURACY))
    return jnp.concatenate(
        [jnp.broadcast_to(experts, (clf_logits.shape[0], experts.shape[0])),
         top_log_probability(clf_logits)],
        axis=-1)


@dataclasses.dataclass(frozen=True)
class Selective:
    name: ClassVar[str] = "selective"
    measurements: ClassVar[dict[str, str]] = SELECTIVE_MEASUREMENTS

    options: ClassifierOptions
    problem: Problem

    def create_model(self, rngs: nnx.Rngs) -> SelectiveNetworks:
        problem = self.problem
        return SelectiveNetworks(
            build_model(self.options.clf_model, image_shape=problem.image_shape,
                        num_outputs=problem.num_classes, width=self.options.clf_width,
                        dtype=problem.dtype, rngs=rngs), problem.num_experts)

    def loss(self, model: SelectiveNetworks, inputs, batch, key):
        clf_logits = model.classifier(inputs)
        clf_loss = jnp.mean(cross_entropy(clf_logits, batch["label"]))
        right = batch["expert_labels"] == batch["label"][:, None]
        model.right[...] += jnp.sum(right, axis=0, dtype=jnp.int32)
        model.seen[...] += jnp.sum(present(batch["expert_labels"]), axis=0, dtype=jnp.int32)
        return clf_loss, {CLF_LOSS: clf_loss, TRAIN_COVERAGE: training_coverage(
            selective_scores(jax.lax.stop_gradient(clf_logits), model.expert_accuracy()),
            available_options(batch["expert_labels"]))}

    def decide(self, model: SelectiveNetworks, inputs) -> Decision:
        clf_logits = model.classifier(inputs)
        return Decision(selective_scores(clf_logits, model.expert_accuracy()), clf_logits,
                        jax.nn.softmax(clf_logits.astype(jnp.float32), axis=-1))
