"""Confidence comparison (Raghu, Blumer, Corrado, Kleinberg, Obermeyer & Mullainathan, "The
algorithmic automation problem: prediction, triage, and human effort", 2019).

Two networks, trained at once by one optimizer (they share no parameters, so each gets the
gradient of its own loss): a classifier h, by cross-entropy, and an expert network e with K
logistic outputs, each trained on r_k = 1[t_k = y]:

    loss = -log softmax(h)_y + sum_k [r_k phi(e_k) + (1 - r_k) phi(-e_k)],  phi(s) = log(1 + e^-s)

sigmoid(e_k) estimates P(expert k is right | x); an expert without an annotation for an input has
no term for that input. The system defers to the expert with the highest
estimate when it beats the classifier's top softmax probability; the scores are the logarithms of
both, so the accuracy-coverage curve sweeps the margin between them.
"""

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from l2d.methods.base import (
    Decision,
    Problem,
    at_least_float32,
    available_options,
    cross_entropy,
    present,
    top_log_probability,
    training_coverage,
)
from l2d.methods.one_network import experts_right
from l2d.methods.options import (
    CLF_LOSS,
    CONFIDENCE_MEASUREMENTS,
    EXPERT_MODEL_LOSS,
    TRAIN_COVERAGE,
    ConfidenceOptions,
)
from l2d.models import build_model


class ConfidenceNetworks(nnx.Module):
    def __init__(self, classifier: nnx.Module, experts: nnx.Module):
        self.classifier = classifier
        self.experts = experts  # K logistic outputs: expert k right or not.


def experts_right_loss(expert_outputs: jax.Array, labels: jax.Array,
                       expert_labels: jax.Array) -> jax.Array:
    """``[B]``: the logistic loss of each output e_k against r_k, summed over the experts
    annotated."""
    expert_outputs = at_least_float32(expert_outputs)
    right = experts_right(expert_labels, labels)
    return jnp.sum(jnp.where(present(expert_labels),
                             right * jax.nn.softplus(-expert_outputs)
                             + (1.0 - right) * jax.nn.softplus(expert_outputs), 0.0), axis=-1)


def confidence_scores(clf_logits: jax.Array, expert_outputs: jax.Array) -> jax.Array:
    """``[B, K + 1]``: log sigmoid(e_k), then log max_c softmax(h)_c."""
    return jnp.concatenate(
        [jax.nn.log_sigmoid(at_least_float32(expert_outputs)),
         top_log_probability(clf_logits)],
        axis=-1)


@dataclasses.dataclass(frozen=True)
class ConfidenceComparison:
    name: ClassVar[str] = "confidence"
    measurements: ClassVar[dict[str, str]] = CONFIDENCE_MEASUREMENTS

    options: ConfidenceOptions
    problem: Problem

    def create_model(self, rngs: nnx.Rngs) -> ConfidenceNetworks:
        options, problem = self.options, self.problem
        build = functools.partial(build_model, image_shape=problem.image_shape,
                                  dtype=problem.dtype, rngs=rngs)
        return ConfidenceNetworks(
            classifier=build(options.clf_model, num_outputs=problem.num_classes,
                             width=options.clf_width),
            experts=build(options.expert_model, num_outputs=problem.num_experts,
                          width=options.expert_width))

    def loss(self, model: ConfidenceNetworks, inputs, batch, key):
        clf_logits, expert_outputs = model.classifier(inputs), model.experts(inputs)
        clf_loss = jnp.mean(cross_entropy(clf_logits, batch["label"]))
        experts_loss = jnp.mean(experts_right_loss(expert_outputs, batch["label"],
                                                   batch["expert_labels"]))
        return clf_loss + experts_loss, {
            CLF_LOSS: clf_loss, EXPERT_MODEL_LOSS: experts_loss,
            TRAIN_COVERAGE: training_coverage(confidence_scores(clf_logits, expert_outputs),
                                              available_options(batch["expert_labels"]))}

    def decide(self, model: ConfidenceNetworks, inputs) -> Decision:
        clf_logits, expert_outputs = model.classifier(inputs), model.experts(inputs)
        return Decision(confidence_scores(clf_logits, expert_outputs), clf_logits,
                        jax.nn.softmax(at_least_float32(clf_logits), axis=-1),
                        jax.nn.sigmoid(at_least_float32(expert_outputs)))
